// The mean of a few runs' figure and its Student-t 95% interval: how sweeps report a figure across seeds (the β×seed
// sweeps of the toy-LM trainers, and any sweep with a `seed` key: Sweep.swift, `across_seeds`).

public enum MeanInterval {
    /// {"mean", "n"} and, for n >= 2, "std" (the sample standard deviation) and "ci95": [lo, hi], the Student-t 95%
    /// interval of the mean, mean ± t_{0.975, n-1} std / sqrt(n).
    public static func json(_ values: [Double]) -> JSONValue {
        let n = values.count
        let mean = values.reduce(0, +) / Double(n)
        var o: JSONObject = ["mean": .number(mean), "n": .int(n)]
        if n >= 2 {
            let variance = values.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(n - 1)
            let sd = variance.squareRoot()
            let half = studentT975(degreesOfFreedom: n - 1) * sd / Double(n).squareRoot()
            o["std"] = .number(sd)
            o["ci95"] = .array([.number(mean - half), .number(mean + half)])
        }
        return .object(o)
    }

    /// The 0.975 quantile of Student's t: a table for 1...30 degrees of freedom, then the Cornish-Fisher expansion
    /// (error < 1e-4 from 30 on).
    public static func studentT975(degreesOfFreedom nu: Int) -> Double {
        let table = [
            12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604,
            2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555,
            2.0518, 2.0484, 2.0452, 2.0423,
        ]
        precondition(nu >= 1)
        if nu <= table.count { return table[nu - 1] }
        let z = 1.959963984540054, v = Double(nu)
        let z3 = z * z * z, z5 = z3 * z * z, z7 = z5 * z * z
        return z + (z3 + z) / (4 * v) + (5 * z5 + 16 * z3 + 3 * z) / (96 * v * v)
            + (3 * z7 + 19 * z5 + 17 * z3 - 15 * z) / (384 * v * v * v)
    }
}

// `tessera-bench sampling`: the sampler benchmark of issue 4 — DDIM eta = 0, 50 steps, the 8-mode ring,
// N = 100,000, exact score, float64 — Tessera (one worker's compute: the sample range split across 2 threads)
// against vectorised NumPy and PyTorch CPU doing the same computation from the same x_T.
//
// `ops/bench sampling` runs three phases so that nothing shares the CPU:
//   1. `tessera-bench sampling --export DIR` writes DIR/sampling_init.safetensors (x_T from Philox stream 0, the
//      target, a_t and the timesteps) for Python;
//   2. ops/bench_sampling.py times NumPy and PyTorch on it and writes DIR/python.json and DIR/python_out.safetensors
//      (their final samples);
//   3. `tessera-bench sampling --python DIR` times Tessera, checks that the three agree and prints the table.

import ArgumentParser
import Foundation
import TesseraCompute
import TesseraWorkloads

struct SamplingBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sampling",
        abstract: "DDIM(eta=0) exact-score sampler: Tessera vs NumPy and PyTorch (sample-steps per second)."
    )

    @Option(help: "Samples N.") var samples: Int = 100_000
    @Option(help: "Sampling steps S.") var steps: Int = 50
    @Option(help: "Threads for Tessera (the sample range is split across them).") var threads: Int = 2
    @Option(help: "Timed rounds (best is reported).") var rounds: Int = 5
    @Option(help: "Write the inputs for Python into this directory and exit.") var export: String?
    @Option(help: "Directory with python.json and python_out.safetensors from ops/bench_sampling.py.") var python: String?

    func validate() throws {
        guard samples >= 1, steps >= 1, steps <= 1000, threads >= 1, rounds >= 1 else {
            throw ValidationError("--samples, --steps (<= 1000), --threads and --rounds must be positive")
        }
    }

    func config() throws -> SamplingConfig {
        try SamplingConfig(
            target: ParityCases.ring(), schedule: BetaSchedule.linear(betaStart: 0.0001, betaEnd: 0.02, steps: 1000),
            sampler: .ddim(eta: 0), samplingSteps: steps, seed: 7, samples: samples)
    }

    func run() throws {
        let c = try config()
        let d = c.target.dimension
        let initial = samplingInitialNoise(config: c, firstIndex: 0, count: samples)
        if let export {
            try FileManager.default.createDirectory(atPath: export, withIntermediateDirectories: true)
            let ts = samplingTimesteps(config: c)
            let ratio = c.schedule.steps / steps
            let file = SafeTensorsFile(
                tensors: [
                    try SafeTensor(name: "x_T", float64: initial, shape: [samples, d]),
                    try SafeTensor(name: "target.weights", float64: c.target.weights, shape: [8]),
                    try SafeTensor(name: "target.means", float64: c.target.means.flatMap { $0 }, shape: [8, d]),
                    try SafeTensor(name: "target.stds", float64: c.target.stds, shape: [8]),
                    try SafeTensor(name: "alpha_bar", float64: c.schedule.alphaBar, shape: [c.schedule.steps]),
                    try SafeTensor(name: "timesteps", int64: ts.map { Int64($0) }, shape: [steps]),
                    try SafeTensor(name: "prev_timesteps", int64: ts.map { Int64($0 - ratio) }, shape: [steps]),
                ],
                metadata: ["samples": String(samples), "steps": String(steps)])
            let path = (export as NSString).appendingPathComponent("sampling_init.safetensors")
            try file.write(toPath: path)
            print("wrote \(path)")
            return
        }

        // Tessera: the range cut in `threads` contiguous parts, one runSamplingChain per thread.
        var best = Double.infinity
        var output: [Double] = []
        for _ in 0..<(rounds + 1) {  // the first round warms up and is not counted
            let (seconds, out) = timeTessera(c, initial: initial)
            if !output.isEmpty { best = min(best, seconds) }
            output = out
        }
        let sampleSteps = Double(samples) * Double(steps)
        print("Sampling benchmark: DDIM eta=0, \(steps) steps, 8-mode ring, N = \(samples), exact score, float64")
        print("timing: whole reverse chain from a given x_T (no statistics pass), best of \(rounds) rounds after warm-up")
        print("")
        var rows: [[String]] = [
            ["Tessera", "\(threads) (sample range split)", String(format: "%.3f", best),
             String(format: "%.3g", sampleSteps / best), "1.00x", "-"],
        ]
        var ratios: [Double] = []
        if let python {
            let data = try Data(contentsOf: URL(fileURLWithPath: (python as NSString).appendingPathComponent("python.json")))
            let report = try JSONDecoder().decode(PythonSamplingReport.self, from: data)
            let outs = try SafeTensorsFile.read(path: (python as NSString).appendingPathComponent("python_out.safetensors"))
            for r in report.results {
                guard let t = outs[r.name] else { continue }
                let theirs = try t.float64Values()
                var maxDiff = 0.0
                for i in 0..<min(theirs.count, output.count) { maxDiff = max(maxDiff, abs(theirs[i] - output[i])) }
                ratios.append(r.seconds / best)
                rows.append([
                    "\(r.label)", "\(r.threads)", String(format: "%.3f", r.seconds),
                    String(format: "%.3g", sampleSteps / r.seconds), String(format: "%.2fx", r.seconds / best),
                    String(format: "%.1e", maxDiff),
                ])
            }
        }
        let header = ["implementation", "threads", "seconds", "sample-steps/s", "Tessera speed-up", "max |Δx| vs Tessera"]
        print("| " + header.joined(separator: " | ") + " |")
        print("|" + header.map { _ in "---" }.joined(separator: "|") + "|")
        for r in rows { print("| " + r.joined(separator: " | ") + " |") }
        if let fastest = ratios.min() {
            print("")
            print(String(format: "Tessera vs the faster of NumPy and PyTorch: %.2fx (target >= 2x)", fastest))
        }
    }

    func timeTessera(_ c: SamplingConfig, initial: [Double]) -> (Double, [Double]) {
        let d = c.target.dimension
        let parts = min(threads, samples)
        let bounds = (0...parts).map { $0 * samples / parts }
        let results = Box<[Int: [Double]]>([:])
        let lock = NSLock()
        let done = DispatchSemaphore(value: 0)
        let start = DispatchTime.now().uptimeNanoseconds
        for p in 0..<parts {
            let lo = bounds[p], hi = bounds[p + 1]
            let slice = Array(initial[(lo * d)..<(hi * d)])
            let thread = Thread {
                var x = slice
                runSamplingChain(config: c, x: &x, firstIndex: lo)
                lock.lock()
                results.value[p] = x
                lock.unlock()
                done.signal()
            }
            thread.stackSize = 8 << 20
            thread.start()
        }
        for _ in 0..<parts { done.wait() }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        let out = (0..<parts).flatMap { results.value[$0]! }
        return (seconds, out)
    }
}

final class Box<T>: @unchecked Sendable {
    var value: T
    init(_ v: T) { value = v }
}

struct PythonSamplingReport: Decodable {
    struct Result: Decodable {
        var name: String
        var label: String
        var threads: String
        var seconds: Double
    }
    var results: [Result]
}

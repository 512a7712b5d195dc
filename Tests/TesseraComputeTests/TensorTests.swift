import Foundation
import Testing
import TesseraCompute

@Suite struct TensorTests {
    @Test func matmulMatchesNaive() throws {
        let a = try Tensor<Double>(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6])
        let b = try Tensor<Double>(shape: [3, 2], scalars: [7, 8, 9, 10, 11, 12])
        #expect(try Tensor.matmul(a, b).scalars == [58, 64, 139, 154])
        #expect(try Tensor.matmul(a, a, transposeB: true).scalars == [14, 32, 32, 77])
        #expect(try Tensor.matmul(a, a, transposeA: true).shape == [3, 3])
        #expect(try Tensor.matvec(a, Tensor(shape: [3], scalars: [1, 0, -1])).scalars == [-2, -2])
        #expect(try Tensor.matvec(a, Tensor(shape: [2], scalars: [1, 1]), transpose: true).scalars == [5, 7, 9])
        let f = try Tensor<Float>(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6])
        #expect(try Tensor.matmul(f, f, transposeB: true).scalars == [14, 32, 32, 77])
        #expect(throws: ComputeError.self) { try Tensor.matmul(a, a) }
    }

    @Test func shapeErrorsAreClear() throws {
        #expect(throws: ComputeError.self) { try Tensor<Float>(shape: [2, 2], scalars: [1, 2, 3]) }
        let a = Tensor<Float>(shape: [2, 2])
        let b = Tensor<Float>(shape: [2, 3])
        do {
            _ = try a + b
            Issue.record("no error")
        } catch let e as ComputeError {
            #expect(e.code == .shapeMismatch)
            #expect(e.description.contains("[2, 2]") && e.description.contains("[2, 3]"))
        }
        #expect(throws: ComputeError.self) { try a.gatherRows([0, 2]) }
    }

    @Test func elementwiseBiasAndReductions() throws {
        let x = try Tensor<Double>(shape: [2, 3], scalars: [1, -2, 3, -4, 5, -6])
        #expect(try x.addingRowBroadcast(Tensor(shape: [3], scalars: [10, 20, 30])).scalars == [11, 18, 33, 6, 25, 24])
        #expect(try x.sumRows().scalars == [-3, 3, -3])
        #expect(try x.sumColumns().scalars == [2, -5])
        #expect(try x.maxColumns().scalars == [3, 5])
        #expect(x.relu().scalars == [1, 0, 3, 0, 5, 0])
        #expect(x.sum() == -3)
        #expect(try (x * x).scalars == [1, 4, 9, 16, 25, 36])
        #expect(try x.gatherRows([2, 0]).scalars == [3, -4])
    }

    @Test func stableLogSumExpAndSoftmax() throws {
        let x = try Tensor<Double>(shape: [3, 3], scalars: [1000, 1000, 1000, -1000, 0, -1000, 1, 2, 3])
        let lse = try x.logSumExpRows().scalars
        #expect(abs(lse[0] - (1000 + log(3))) < 1e-9)
        #expect(abs(lse[1] - 0) < 1e-12)
        #expect(abs(lse[2] - log(exp(1) + exp(2) + exp(3))) < 1e-12)
        let sm = try x.softmaxRows()
        for r in 0..<3 {
            let s = (0..<3).reduce(0.0) { $0 + sm[r, $1] }
            #expect(abs(s - 1) < 1e-12)
        }
        #expect(abs(sm[0, 0] - 1.0 / 3.0) < 1e-12)  // x - lse at magnitude 1000 carries ~1e-13 rounding
        let lsm = try x.logSoftmaxRows()
        #expect(lsm.scalars.allSatisfy { $0.isFinite })
        #expect(abs(lsm[1, 0] + 1000) < 1e-9)
        let negInf = try Tensor<Double>(shape: [1, 2], scalars: [-.infinity, -.infinity])
        #expect(try negInf.logSumExpRows().scalars == [-.infinity])
        let big = try Tensor<Float>(shape: [1, 2], scalars: [88, 89])
        #expect(try big.logSumExpRows().scalars[0].isFinite)
    }

    @Test func timeEmbeddingMatchesFormula() throws {
        let t: [Double] = [0, 1, 37.5, 999]
        let e = try Tensor<Double>.timeEmbedding(t, dimension: 32)
        #expect(e.shape == [4, 32])
        for (b, tb) in t.enumerated() {
            for j in 0..<16 {
                let w = pow(10_000.0, -Double(j) / 16)
                #expect(abs(e[b, j] - sin(tb * w)) < 1e-12)
                #expect(abs(e[b, 16 + j] - cos(tb * w)) < 1e-12)
            }
        }
        #expect(e[0, 0] == 0 && e[0, 16] == 1)
        #expect(throws: ComputeError.self) { try Tensor<Float>.timeEmbedding([1], dimension: 7) }
    }

    @Test func fastSiLUMatchesDoubleReference() {
        // The vectorised Float SiLU (and its derivative) against Double libm, over a wide range including the tails.
        var xs: [Float] = stride(from: -100, through: 100, by: 0.037).map { Float($0) }
        xs += [0, -0.0, 1e-30, -1e-30, 87, -87, 88.5, -88.5, 200, -200]
        let x = try! Tensor<Float>(shape: [xs.count], scalars: xs)
        let y = x.silu()
        let g = try! x.activationBackward(.silu, upstream: Tensor(shape: [xs.count], repeating: 1))
        var worst = 0.0, worstD = 0.0
        for (i, v) in xs.enumerated() {
            let d = Double(v)
            let s = 1 / (1 + exp(-d))
            let ref = d * s, refD = s * (1 + d * (1 - s))
            worst = max(worst, abs(Double(y.scalars[i]) - ref) / max(abs(ref), 1e-30))
            worstD = max(worstD, abs(Double(g.scalars[i]) - refD) / max(abs(refD), 1e-3))
            #expect(y.scalars[i].isFinite && g.scalars[i].isFinite)
        }
        #expect(worst < 2e-6, "max relative error of silu \(worst)")
        #expect(worstD < 2e-6, "max error of silu' \(worstD)")
    }

    @Test func largePassesSplitAcrossThreadsGiveTheSameBits() throws {
        // Large elementwise passes may run on two threads; the result must not depend on that.
        let n = 300_000
        var s = PhiloxStream(seed: 5, index: 0, step: 0, stream: 2)
        let z = try Tensor<Float>(shape: [n], scalars: s.normals(n).map { Float($0 * 4) })
        let u = try Tensor<Float>(shape: [n], scalars: s.normals(n).map { Float($0) })
        let big = try z.activationBackward(.silu, upstream: u)
        var pieces: [Float] = []
        for lo in stride(from: 0, to: n, by: 1000) {
            let zs = try Tensor<Float>(shape: [1000], scalars: Array(z.scalars[lo..<(lo + 1000)]))
            let us = try Tensor<Float>(shape: [1000], scalars: Array(u.scalars[lo..<(lo + 1000)]))
            pieces += try zs.activationBackward(.silu, upstream: us).scalars
        }
        #expect(big.scalars.map(\.bitPattern) == pieces.map(\.bitPattern))

        var mlp = try MLP<Float>(sizes: [4, 512, 2], activation: .silu, seed: 2)
        mlp.parameters = mlp.parameters.map { $0 * 3 }
        let x = try Tensor<Float>(shape: [600, 4], scalars: s.normals(2400).map { Float($0) })
        var ws = mlp.makeWorkspace(batchCapacity: 600)
        try mlp.forward(x, workspace: &ws, training: true)
        let a = ws.output
        try mlp.forward(x, workspace: &ws, training: false)
        #expect(a.scalars.map(\.bitPattern) == ws.output.scalars.map(\.bitPattern))
        #expect(BLASRuntime.threads >= 1 && !BLASRuntime.coreName.isEmpty)
    }
}

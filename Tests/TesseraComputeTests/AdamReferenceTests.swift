import Foundation
import Testing
import TesseraCompute

/// Adam/AdamW against PyTorch trajectories from ops/fixtures/adam_reference.py (committed output; no PyTorch here).
@Suite struct AdamReferenceTests {
    struct State: Decodable {
        var params: [Double]
        var exp_avg: [Double]
        var exp_avg_sq: [Double]
    }

    struct Case: Decodable {
        var name: String
        var kind: String
        var lr: Double
        var betas: [Double]
        var eps: Double
        var weight_decay: Double
        var schedule: [Schedule]
        var params0: [Double]
        var grads: [[Double]]
        var lrs: [Double]
        var foreach: [State]
        var single_tensor: [State]
    }

    enum Schedule: Decodable {
        case text(String), number(Double)
        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let s = try? c.decode(String.self) { self = .text(s) } else { self = .number(try c.decode(Double.self)) }
        }
        var number: Double { if case .number(let v) = self { v } else { .nan } }
    }

    struct Doc: Decodable {
        var torch_version: String
        var cases: [Case]
    }

    static func load() throws -> Doc {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/adam_reference.json")
        return try JSONDecoder().decode(Doc.self, from: Data(contentsOf: url))
    }

    static func schedule(_ s: [Schedule]) -> LRSchedule {
        guard case .text(let kind) = s[0] else { return .constant }
        switch kind {
        case "linear_warmup": return .linearWarmup(warmupSteps: Int(s[1].number))
        case "cosine": return .cosine(warmupSteps: Int(s[1].number), totalSteps: Int(s[2].number), minFactor: s[3].number)
        default: return .constant
        }
    }

    @Test func matchesPyTorchTrajectories() throws {
        let doc = try Self.load()
        #expect(doc.cases.count == 5)
        for c in doc.cases {
            let config = AdamConfiguration(
                learningRate: c.lr, beta1: c.betas[0], beta2: c.betas[1], eps: c.eps, weightDecay: c.weight_decay,
                decoupledWeightDecay: c.kind == "adamw", schedule: Self.schedule(c.schedule))
            var opt = try Adam<Float>(configuration: config, parameterCount: c.params0.count)
            var params = c.params0.map { Float($0) }
            // PyTorch's CPU kernels are compiled with floating-point contraction (its AVX2/AVX-512 builds fuse some
            // multiply-adds, e.g. in addcmul and addcdiv) and that is a property of the build, not of the algorithm.
            // So the check is a bound, not bitwise: it must be far below what any formula change (bias correction,
            // eps placement, decay order, lerp branch) produces, which is >= 1e-4 of one step here.
            var lrSum = 0.0, gMax = [Double](repeating: 0, count: params.count)
            var worstP = 0.0, worstM = 0.0, worstV = 0.0
            for (k, g) in c.grads.enumerated() {
                #expect(abs(opt.nextLearningRate - c.lrs[k]) <= 1e-15 * c.lrs[k], "\(c.name) lr at step \(k + 1)")
                lrSum += c.lrs[k]
                opt.update(&params, gradients: g.map { Float($0) })
                for i in params.indices { gMax[i] = max(gMax[i], abs(g[i]), c.weight_decay * abs(Double(params[i]))) }
                for ref in [c.foreach[k], c.single_tensor[k]] {
                    for i in params.indices {
                        let scaleP = 2 * Double(Float(ref.params[i]).ulp) + 1e-6 * lrSum
                        worstP = max(worstP, abs(Double(params[i]) - ref.params[i]) / scaleP)
                        worstM = max(worstM, abs(Double(opt.expAvg[i]) - ref.exp_avg[i]) / (1e-6 * gMax[i] + 1e-38))
                        worstV = max(
                            worstV, abs(Double(opt.expAvgSq[i]) - ref.exp_avg_sq[i]) / (1e-6 * gMax[i] * gMax[i] + 1e-38))
                    }
                }
            }
            #expect(worstP <= 1, "\(c.name): parameters off by \(worstP) x (2 ulp + 1e-6 sum lr)")
            #expect(worstM <= 1, "\(c.name): exp_avg off by \(worstM) x 1e-6 max|g|")
            #expect(worstV <= 1, "\(c.name): exp_avg_sq off by \(worstV) x 1e-6 max|g|^2")
            #expect(opt.step == c.grads.count)
        }
    }
}

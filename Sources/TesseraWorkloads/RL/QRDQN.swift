// `kind: rl`, `algorithm: qr-dqn`: quantile-regression DQN (Dabney et al. 2017, "Distributional Reinforcement
// Learning with Quantile Regression"; Dopamine's jax/agents/quantile/quantile_agent.py) on the MDP of
// DistributionalMDP.swift (WORKLOADS.md §2 R4), with the loop of DistributionalCritic.swift.
//
// The network gives N quantile values theta_i(h, a) at the fixed levels tau_i = (2i + 1) / (2N), i < N (Dopamine's
// quantile midpoints). For a transition (h, a, r, h'): a* = argmax_a' mean_j theta'_j(h', a') of the target network
// (Dopamine's target_distribution), the targets T_j = r + gamma theta'_j(h', a*) (T_j = r when h' = 0), and the
// quantile Huber loss of QuantileHuberLoss.swift: sum over i, mean over j, mean over the batch. The learned law of
// (h, a) is the uniform mixture of the N Diracs theta_i(h, a).
//
// kappa: Dopamine's default is 1, which the fixed point pays for: within kappa of an atom of the target law the Huber
// quantile is not the quantile (it moves linearly from z - kappa to z + kappa across the atom's levels), so with this
// MDP's atoms 4 apart the kappa = 1 fixed point is at W1 0.38 (h = 1) to 0.49 (h = 8) from the exact laws, against
// 0.044 at kappa = 0 with N = 200 (docs/training.md §11 has the table). The examples and the W1 test use kappa = 0.

import Foundation
import TesseraCompute
import TesseraCore

public struct QRDQN: TypedAlgorithm {
    public var kind: JobKind { .rl }
    public var name: String { "qr-dqn" }
    public var summary: String {
        "QR-DQN (Dopamine): N fixed quantiles and the quantile Huber loss, on the 8-step MDP with exact return laws"
    }

    public init() {}

    public struct Config: Sendable {
        var critic: CriticConfig
        var rule: QRRule
    }

    public func configure(_ spec: JobSpec) throws -> Config {
        let p = spec.paramsReader
        let critic = try CriticConfig.parse(
            spec, algorithmKeys: ["num_quantiles", "kappa"], defaults: .init(steps: 5000, learningRate: 0.3))
        let n = try p.int("num_quantiles", default: 200, range: 1...4096)
        let kappa = try p.double("kappa", range: 0...1e6, default: 1)
        return Config(critic: critic, rule: QRRule(quantiles: n, kappa: kappa))
    }

    public func plan(_ spec: JobSpec, config: Config) throws -> [TypedShardSlice<CriticPoint>] { config.critic.slices }

    public func run(_ slice: CriticPoint, config: Config, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<CriticShardSummary>
    {
        TypedShardOutput(
            summary: try CriticTrainer.run(rule: config.rule, config: config.critic, slice: slice, task: task, sink: sink))
    }

    public func makeReducer(_ spec: JobSpec, config: Config) throws -> SummaryReducer<CriticShardSummary> {
        CriticTrainer.reducer(algorithm: name, config: config.critic)
    }
}

struct QRRule: CriticRule {
    var quantiles: Int
    var kappa: Double

    var name: String { "qr-dqn" }
    var outputsPerAction: Int { quantiles }
    var taus: [Double] { (0..<quantiles).map { (2 * Double($0) + 1) / (2 * Double(quantiles)) } }

    func loss(
        transitions: [(Transition, Double)], online: UnsafeBufferPointer<Double>, target: UnsafeBufferPointer<Double>,
        gamma: Double, gradient: inout [Double]
    ) -> Double {
        let n = quantiles, width = 2 * n
        let taus = self.taus
        var total = 0.0
        for (t, weight) in transitions {
            var targets = [Double](repeating: t.reward, count: n)
            if !t.terminal {
                let row = (t.nextH - 1) * width
                var best = 0, bestMean = -Double.infinity
                for a in 0..<2 {
                    var s = 0.0
                    for j in 0..<n { s += target[row + a * n + j] }
                    if s / Double(n) > bestMean {
                        bestMean = s / Double(n)
                        best = a
                    }
                }
                for j in 0..<n { targets[j] = t.reward + gamma * target[row + best * n + j] }
            }
            let start = (t.h - 1) * width + t.action * n
            var g = [Double](repeating: 0, count: n)
            total += weight * QuantileHuberLoss.transition(
                thetas: Array(online[start..<(start + n)])[...], taus: taus, kappa: kappa,
                targets: QuantileHuberLoss.Targets(targets), gradient: &g, offset: 0, scale: weight)
            for i in 0..<n { gradient[start + i] += g[i] }
        }
        return total
    }

    func law(_ outputs: ArraySlice<Double>) -> DiscreteLaw { DiscreteLaw(atoms: Array(outputs)) }
}

// `kind: rl`, `algorithm: c51`: categorical DQN (Bellemare et al. 2017, "A Distributional Perspective on
// Reinforcement Learning"; Dopamine's jax/agents/rainbow/rainbow_agent.py with C51's settings) on the MDP of
// DistributionalMDP.swift (WORKLOADS.md §2 R4), with the loop of DistributionalCritic.swift.
//
// The network gives K logits per action; p_k(h, a) = softmax is the mass on atom z_k = v_min + k dz,
// dz = (v_max - v_min) / (K - 1). For a transition (h, a, r, h'): a* = argmax_a' sum_k z_k p'_k(h', a') of the target
// network, and each target atom r + gamma z_j (just r when h' = 0), clipped to [v_min, v_max], at b = (. - v_min) / dz
// puts p'_j on its neighbours l = floor(b), u = ceil(b) with weights (u - b) and (b - l) (Dopamine's
// project_distribution, eq. 7 of the paper) -- all of it on l when b is an atom (l = u), where those two weights would
// both be 0: with gamma = 1 and integer atoms that is every target atom. The loss is the cross-entropy
// -sum_k m_k log p_k(h, a) of the projected target m, mean over the batch.
//
// Defaults: atoms on the integers from -H to 3H (the lowest and highest returns; K = 4H + 1 = 33 for H = 8), so with
// gamma = 1 every exact law lies on the support and the projection is exact. Dopamine's Atari setting (51 atoms on
// [-10, 10]) would put this MDP's integer returns between atoms (dz = 0.64 on [-8, 24]), and each projection then
// costs up to dz / 2 in W1.

import Foundation
import TesseraCompute
import TesseraCore

public struct C51: TypedAlgorithm {
    public var kind: JobKind { .rl }
    public var name: String { "c51" }
    public var summary: String {
        "C51 (Dopamine): categorical return laws, projected Bellman targets and cross-entropy, on the 8-step MDP"
    }

    public init() {}

    public struct Config: Sendable {
        var critic: CriticConfig
        var rule: C51Rule
    }

    public func configure(_ spec: JobSpec) throws -> Config {
        let p = spec.paramsReader
        let critic = try CriticConfig.parse(
            spec, algorithmKeys: ["num_atoms", "v_min", "v_max"], defaults: .init(steps: 3000, learningRate: 0.05))
        let H = critic.mdp.horizon
        let vMin = try p.double("v_min", range: -1e6...1e6, default: Double(-H))
        let vMax = try p.double("v_max", range: -1e6...1e6, default: Double(3 * H))
        guard vMax > vMin else { throw p.error(p.has("v_max") ? "v_max" : "v_min", "params.v_max must be above params.v_min (\(vMin))") }
        let atoms = try p.int("num_atoms", default: 4 * H + 1, range: 2...4096)
        return Config(critic: critic, rule: C51Rule(atoms: atoms, vMin: vMin, vMax: vMax))
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

struct C51Rule: CriticRule {
    var atoms: Int
    var vMin: Double
    var vMax: Double

    var name: String { "c51" }
    var outputsPerAction: Int { atoms }
    var delta: Double { (vMax - vMin) / Double(atoms - 1) }
    var support: [Double] { (0..<atoms).map { vMin + Double($0) * delta } }

    /// softmax of `logits` (max-subtracted).
    static func softmax(_ logits: UnsafeBufferPointer<Double>, _ range: Range<Int>) -> [Double] {
        var m = -Double.infinity
        for i in range { m = max(m, logits[i]) }
        var e = range.map { exp(logits[$0] - m) }
        let s = e.reduce(0, +)
        for i in e.indices { e[i] /= s }
        return e
    }

    /// Adds mass `p` at `value` (clipped to [v_min, v_max]) to its neighbouring atoms of `m`.
    func project(_ value: Double, _ p: Double, into m: inout [Double]) {
        let b = (min(max(value, vMin), vMax) - vMin) / delta
        let l = Int(b.rounded(.down)), u = Int(b.rounded(.up))
        if l == u {
            m[l] += p
        } else {
            m[l] += p * (Double(u) - b)
            m[u] += p * (b - Double(l))
        }
    }

    func loss(
        transitions: [(Transition, Double)], online: UnsafeBufferPointer<Double>, target: UnsafeBufferPointer<Double>,
        gamma: Double, gradient: inout [Double]
    ) -> Double {
        let K = atoms, width = 2 * K
        let z = support
        var total = 0.0
        for (t, weight) in transitions {
            var m = [Double](repeating: 0, count: K)
            if t.terminal {
                project(t.reward, 1, into: &m)
            } else {
                let row = (t.nextH - 1) * width
                var best: [Double] = [], bestMean = -Double.infinity
                for a in 0..<2 {
                    let p = Self.softmax(target, (row + a * K)..<(row + (a + 1) * K))
                    let mean = zip(z, p).reduce(0) { $0 + $1.0 * $1.1 }
                    if mean > bestMean {
                        bestMean = mean
                        best = p
                    }
                }
                for j in 0..<K { project(t.reward + gamma * z[j], best[j], into: &m) }
            }
            let start = (t.h - 1) * width + t.action * K
            let p = Self.softmax(online, start..<(start + K))
            var mx = -Double.infinity
            for k in 0..<K { mx = max(mx, online[start + k]) }
            var s = 0.0
            for k in 0..<K { s += exp(online[start + k] - mx) }
            let logZ = mx + log(s)
            var rowLoss = 0.0
            for k in 0..<K {
                if m[k] > 0 { rowLoss -= m[k] * (online[start + k] - logZ) }
                gradient[start + k] += weight * (p[k] - m[k])
            }
            total += weight * rowLoss
        }
        return total
    }

    func law(_ outputs: ArraySlice<Double>) -> DiscreteLaw {
        let p = Array(outputs).withUnsafeBufferPointer { Self.softmax($0, 0..<atoms) }
        return DiscreteLaw(pairs: Array(zip(support, p)))
    }
}

// The small MDP of the distributional critics (WORKLOADS.md §2 R4) and its exact return laws.
//
// H steps; the state is h = the steps left (H at the start, 0 terminal). In every state two actions: safe (0) pays
// +1; risky (1) pays +3 with probability .55, else -1 (mean 1.2). Either way h -> h - 1. The return of (h, a) under a
// policy pi is Z(h, a) = r(a) + gamma Z(h - 1, pi(h - 1)), Z(0) = 0. Every law here is finite: at most 2^h atoms,
// exact doubles, merged where equal (with gamma = 1 every return is an integer, so the laws are exact).
//
// Replay: the critics learn from random transitions of this MDP, not from an agent's episodes. Row b of the batch of
// training step k (1-based) is drawn from Philox(shard seed; index b, step k, stream 3 "minibatch") as a
// `PhiloxStream`: uniform 0 -> h = 1 + min(H - 1, floor(u H)), uniform 1 -> a = min(1, floor(2 u)), uniform 2 ->
// risky pays +3 iff u < .55 (drawn whatever the action, so the layout never depends on it; docs/reproducibility.md
// §3). So step k's batch is a pure function of (seed, k): no replay buffer to checkpoint, only the step counter.

import Foundation
import TesseraCompute

/// A finite law: `values` strictly increasing, `probs` > 0 summing to 1 (up to rounding).
struct DiscreteLaw: Sendable, Equatable {
    var values: [Double]
    var probs: [Double]

    static let zero = DiscreteLaw(values: [0], probs: [1])

    /// The law of `pairs` (value, probability), sorted and merged where values are equal.
    init(pairs: [(Double, Double)]) {
        let sorted = pairs.sorted { $0.0 < $1.0 }
        var v: [Double] = [], p: [Double] = []
        for (x, q) in sorted where q > 0 {
            if let last = v.last, last == x { p[p.count - 1] += q } else {
                v.append(x)
                p.append(q)
            }
        }
        values = v
        probs = p
    }

    init(values: [Double], probs: [Double]) {
        self.values = values
        self.probs = probs
    }

    /// N equally likely atoms (a quantile representation), in any order.
    init(atoms: [Double]) {
        let w = 1 / Double(atoms.count)
        self.init(pairs: atoms.map { ($0, w) })
    }

    var mean: Double { zip(values, probs).reduce(0) { $0 + $1.0 * $1.1 } }

    /// r + gamma Z, mixed over the reward outcomes `rewards` (value, probability).
    static func bellman(rewards: [(Double, Double)], gamma: Double, next: DiscreteLaw) -> DiscreteLaw {
        var pairs: [(Double, Double)] = []
        for (r, q) in rewards {
            for (z, p) in zip(next.values, next.probs) { pairs.append((r + gamma * z, q * p)) }
        }
        return DiscreteLaw(pairs: pairs)
    }

    /// CVaR_eta as IQN's distortion beta(tau) = eta tau defines it: (1/eta) int_0^eta F^{-1}(u) du.
    func cvar(_ eta: Double) -> Double {
        var acc = 0.0, c = 0.0
        for (x, p) in zip(values, probs) {
            let take = min(p, eta - c)
            if take <= 0 { break }
            acc += take * x
            c += take
        }
        return acc / eta
    }

    /// W1(a, b) = int |F_a(x) - F_b(x)| dx, exactly, over the merged supports.
    static func wasserstein1(_ a: DiscreteLaw, _ b: DiscreteLaw) -> Double {
        var i = 0, j = 0
        var fa = 0.0, fb = 0.0, total = 0.0
        var x = min(a.values[0], b.values[0])
        while i < a.values.count || j < b.values.count {
            let next = min(i < a.values.count ? a.values[i] : .infinity, j < b.values.count ? b.values[j] : .infinity)
            total += abs(fa - fb) * (next - x)
            x = next
            while i < a.values.count, a.values[i] == next {
                fa += a.probs[i]
                i += 1
            }
            while j < b.values.count, b.values[j] == next {
                fb += b.probs[j]
                j += 1
            }
        }
        return total
    }
}

/// The MDP: horizon and discount (the rewards are fixed by the design).
struct DistributionalMDP: Sendable, Equatable {
    static let actions = 2
    static let actionNames = ["safe", "risky"]
    static let winProbability = 0.55
    static let safeReward = 1.0, winReward = 3.0, lossReward = -1.0

    var horizon: Int
    var gamma: Double

    /// The reward outcomes of action a: (value, probability).
    static func rewards(_ a: Int) -> [(Double, Double)] {
        a == 0 ? [(safeReward, 1)] : [(winReward, winProbability), (lossReward, 1 - winProbability)]
    }

    /// Exact laws Z(h, a) under `policy` (policy[h - 1] = the action at h), indexed [h - 1][a].
    func laws(policy: [Int]) -> [[DiscreteLaw]] {
        var out: [[DiscreteLaw]] = []
        var next = DiscreteLaw.zero  // Z(h - 1, pi(h - 1))
        for h in 1...horizon {
            let row = (0..<Self.actions).map { DiscreteLaw.bellman(rewards: Self.rewards($0), gamma: gamma, next: next) }
            out.append(row)
            next = row[policy[h - 1]]
        }
        return out
    }

    /// The policy that is greedy, at every h, for `score` of the laws under itself from h - 1 on (ties: the lower
    /// action). score = mean gives the risk-neutral optimum; score = CVaR_eta the greedy-CVaR policy of IQN.
    func greedyPolicy(_ score: (DiscreteLaw) -> Double) -> [Int] {
        var policy: [Int] = []
        var next = DiscreteLaw.zero
        for _ in 1...horizon {
            let row = (0..<Self.actions).map { DiscreteLaw.bellman(rewards: Self.rewards($0), gamma: gamma, next: next) }
            let scores = row.map(score)
            let a = scores[1] > scores[0] ? 1 : 0
            policy.append(a)
            next = row[a]
        }
        return policy
    }

    var optimalPolicy: [Int] { greedyPolicy { $0.mean } }

    /// The network input of state h (1...H): one-hot at h - 1. h = 0 (terminal) is never fed.
    func encode(_ h: Int, into buffer: inout [Double], row: Int) {
        for j in 0..<horizon { buffer[row * horizon + j] = j == h - 1 ? 1 : 0 }
    }
}

/// One replay transition.
struct Transition: Sendable, Equatable {
    var h: Int
    var action: Int
    var reward: Double

    var nextH: Int { h - 1 }
    var terminal: Bool { h == 1 }

    /// Row `index` of step `step`'s batch (file comment).
    init(seed: UInt64, step: Int, index: Int, horizon: Int) {
        var s = PhiloxStream(seed: seed, index: UInt32(index), step: UInt32(step), stream: .minibatch)
        h = 1 + min(horizon - 1, Int(s.nextUniform() * Double(horizon)))
        action = min(1, Int(s.nextUniform() * 2))
        let win = s.nextUniform() < DistributionalMDP.winProbability
        reward = action == 0 ? DistributionalMDP.safeReward : (win ? DistributionalMDP.winReward : DistributionalMDP.lossReward)
    }
}

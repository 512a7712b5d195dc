// The exact tools of the toy LM, by enumeration of all K = V^L responses (WORKLOADS.md §2 R1; docs/training.md).
//
// For a KL coefficient beta, the KL-regularised objective J(pi) = E_x [E_pi r - beta KL(pi(.|x) || pi_ref(.|x))] is
// maximised by the Gibbs policy pi*(y|x) = pi_ref(y|x) e^{r(x,y)/beta} / Z(x), and
// J* = beta E_x log Z(x) = J(pi*) >= J(pi) for every pi, with J* - J(pi) = beta E_x KL(pi || pi*) exactly.
// The reward-KL frontier is the curve beta -> (E_x KL(pi*_beta || pi_ref), E_x E_{pi*_beta} r): the largest expected
// reward any policy reaches at that KL to the reference. Contexts are weighted uniformly. No BLAS: the merge uses this.

import Foundation

/// Exact statistics of one policy given as a table log pi(y|x), [M, K].
public struct ToyLMExactMetrics: Sendable, Equatable {
    /// E_x KL(pi || pi*_beta).
    public var klToOptimum: Double
    /// J* - J(pi) (>= 0; equals beta E_x KL(pi || pi*)).
    public var objectiveGap: Double
    /// E_x KL(pi || pi_ref).
    public var klToReference: Double
    /// E_x E_pi r.
    public var expectedReward: Double
    /// J(pi) = expectedReward - beta klToReference.
    public var objective: Double
    /// J* = beta E_x log Z_beta(x).
    public var optimalObjective: Double

    /// The metric rows streamed by training shards, by name.
    public var named: [(String, Double)] {
        [
            ("exact/kl_to_optimum", klToOptimum), ("exact/objective_gap", objectiveGap),
            ("exact/kl_to_ref", klToReference), ("exact/expected_reward", expectedReward),
        ]
    }
}

/// A point of the reward-KL plane, `{"kl_to_ref", "expected_reward"}`.
public struct ToyLMFrontierPoint: Codable, Sendable, Equatable {
    /// E_x KL(pi || pi_ref).
    public var klToReference: Double
    /// E_x E_pi r.
    public var expectedReward: Double

    public init(klToReference: Double, expectedReward: Double) {
        self.klToReference = klToReference
        self.expectedReward = expectedReward
    }

    enum CodingKeys: String, CodingKey {
        case klToReference = "kl_to_ref", expectedReward = "expected_reward"
    }

    public func distance(to o: ToyLMFrontierPoint) -> Double {
        let a = klToReference - o.klToReference, b = expectedReward - o.expectedReward
        return (a * a + b * b).squareRoot()
    }
}

extension ToyLMProblem {
    /// log Z_beta(x) = log sum_y pi_ref(y|x) e^{r(x,y)/beta} for each context, max-shifted.
    public func logPartition(beta: Double) -> [Double] {
        precondition(beta > 0 && beta.isFinite, "beta must be positive")
        let K = responses
        return (0..<contexts).map { x in
            var m = -Double.infinity
            for y in 0..<K { m = max(m, referenceLogProb[x * K + y] + reward[x * K + y] / beta) }
            var s = 0.0
            for y in 0..<K { s += exp(referenceLogProb[x * K + y] + reward[x * K + y] / beta - m) }
            return m + log(s)
        }
    }

    /// The Gibbs optimum: log pi*_beta(y|x) = log pi_ref + r/beta - log Z_beta(x), [M, K].
    public func gibbsLogProb(beta: Double) -> [Double] {
        let K = responses
        let logZ = logPartition(beta: beta)
        var out = [Double](repeating: 0, count: contexts * K)
        for x in 0..<contexts {
            for y in 0..<K {
                out[x * K + y] = referenceLogProb[x * K + y] + reward[x * K + y] / beta - logZ[x]
            }
        }
        return out
    }

    /// J* = beta E_x log Z_beta(x).
    public func optimalObjective(beta: Double) -> Double {
        beta * logPartition(beta: beta).reduce(0, +) / Double(contexts)
    }

    /// Every exact statistic of the policy `logProb` ([M, K], log pi(y|x)) for the objective with coefficient beta.
    public func exactMetrics(logProb: [Double], beta: Double) -> ToyLMExactMetrics {
        precondition(logProb.count == contexts * responses, "logProb must be [M, K]")
        let K = responses
        let logZ = logPartition(beta: beta)
        var klOpt = 0.0, klRef = 0.0, reward = 0.0
        for x in 0..<contexts {
            var ko = 0.0, kr = 0.0, er = 0.0
            for y in 0..<K {
                let i = x * K + y
                let lp = logProb[i]
                let p = exp(lp)
                guard p > 0 else { continue }
                let star = referenceLogProb[i] + self.reward[i] / beta - logZ[x]
                ko += p * (lp - star)
                kr += p * (lp - referenceLogProb[i])
                er += p * self.reward[i]
            }
            klOpt += ko
            klRef += kr
            reward += er
        }
        let n = Double(contexts)
        let j = reward / n - beta * klRef / n
        let jStar = beta * logZ.reduce(0, +) / n
        return ToyLMExactMetrics(
            klToOptimum: klOpt / n, objectiveGap: jStar - j, klToReference: klRef / n, expectedReward: reward / n,
            objective: j, optimalObjective: jStar)
    }

    /// The analytic frontier point of beta: (E_x KL(pi*_beta || pi_ref), E_x E_{pi*_beta} r).
    public func frontierPoint(beta: Double) -> ToyLMFrontierPoint {
        let K = responses
        let logZ = logPartition(beta: beta)
        var kl = 0.0, reward = 0.0
        for x in 0..<contexts {
            for y in 0..<K {
                let i = x * K + y
                let l = self.reward[i] / beta - logZ[x]  // log pi* - log pi_ref
                let p = exp(referenceLogProb[i] + l)
                guard p > 0 else { continue }
                kl += p * l
                reward += p * self.reward[i]
            }
        }
        let n = Double(contexts)
        return ToyLMFrontierPoint(klToReference: kl / n, expectedReward: reward / n)
    }

    /// Euclidean distance in the (KL, reward) plane from `point` to the analytic frontier curve, minimised over
    /// beta: a log-spaced grid of 301 betas over [1e-4, 1e6] x reward_scale, then golden-section search between the
    /// best grid point's neighbours; the curve's beta -> infinity end, the reference (0, E_ref r), is a candidate too.
    /// (The beta -> 0 end, the argmax policy, is reached by the grid up to terms of order e^{-10^4 gap}.)
    public func frontierDistance(_ point: ToyLMFrontierPoint) -> Double {
        let scale = spec.rewardScale
        let lo = log(1e-4 * scale), hi = log(1e6 * scale)
        let n = 300
        var referenceReward = 0.0
        for i in 0..<(contexts * responses) { referenceReward += exp(referenceLogProb[i]) * reward[i] }
        let reference = ToyLMFrontierPoint(klToReference: 0, expectedReward: referenceReward / Double(contexts))
        func f(_ t: Double) -> Double { frontierPoint(beta: exp(t)).distance(to: point) }
        var best = 0
        var bestValue = Double.infinity
        var grid = [Double](repeating: 0, count: n + 1)
        for i in 0...n {
            grid[i] = lo + (hi - lo) * Double(i) / Double(n)
            let v = f(grid[i])
            if v < bestValue {
                bestValue = v
                best = i
            }
        }
        var a = grid[max(0, best - 1)], b = grid[min(n, best + 1)]
        let g = (5.0.squareRoot() - 1) / 2
        var c = b - g * (b - a), d = a + g * (b - a)
        var fc = f(c), fd = f(d)
        for _ in 0..<80 {
            if fc < fd {
                b = d
                d = c
                fd = fc
                c = b - g * (b - a)
                fc = f(c)
            } else {
                a = c
                c = d
                fc = fd
                d = a + g * (b - a)
                fd = f(d)
            }
        }
        return min(bestValue, fc, fd, reference.distance(to: point))
    }
}

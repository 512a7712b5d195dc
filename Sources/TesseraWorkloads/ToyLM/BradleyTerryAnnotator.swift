// The Bradley-Terry annotator of the toy LM's reward (WORKLOADS.md §3): P(y > y' | x) = sigma(r(x,y) - r(x,y')).
//
// Pair i is a pure function of (seed, i): Philox(seed; index i, step 0, stream 6 "preference label") gives, in this
// order, one uniform for the context (x = floor(u M)), L uniforms for y, L uniforms for y' (each drawn token by token
// from the proposal mu, inverse CDF in vocabulary order), and one uniform for the label (y wins iff u < sigma(r - r')).
// So a preference data set of N pairs is the same whatever shard, worker or order produced it.
//
// The population form (used by exact tests and `data.source: population`) weights every ordered pair (y, y') of
// every context by mu(y|x) mu(y'|x) / M, with the soft label P(y > y' | x).
//
// Label noise f (default 0): labels follow (1 - f) P + f (1 - P) instead of P, which is the law of the BT label
// flipped with probability f; the pair's draws are unchanged (the label uniform is compared with that probability).

import Foundation
import TesseraCompute

public struct ToyLMPreferencePair: Sendable, Equatable {
    public var context: Int
    public var chosen: Int
    public var rejected: Int
}

public struct BradleyTerryAnnotator: Sendable {
    /// The distribution the two responses of a pair are drawn from.
    public enum Proposal: String, Sendable, CaseIterable {
        /// mu = pi_ref(. | x).
        case reference
        /// mu = uniform over the K responses.
        case uniform
    }

    public let problem: ToyLMProblem
    public let proposal: Proposal
    public let seed: UInt64
    /// f in [0, 1/2): the probability that a label is flipped.
    public let labelNoise: Double

    public init(problem: ToyLMProblem, proposal: Proposal, seed: UInt64, labelNoise: Double = 0) {
        precondition(labelNoise >= 0 && labelNoise < 0.5, "label noise must be in [0, 1/2)")
        self.problem = problem
        self.proposal = proposal
        self.seed = seed
        self.labelNoise = labelNoise
    }

    /// P(y beats y' | x) = sigma(r(x, y) - r(x, y')).
    public func preferenceProbability(context x: Int, _ y: Int, over y2: Int) -> Double {
        let K = problem.responses
        return ToyLMMath.sigmoid(problem.reward[x * K + y] - problem.reward[x * K + y2])
    }

    /// The probability that the label says y beats y': P, or (1 - f) P + f (1 - P) with label noise f.
    public func labelProbability(context x: Int, _ y: Int, over y2: Int) -> Double {
        let p = preferenceProbability(context: x, y, over: y2)
        return labelNoise == 0 ? p : (1 - labelNoise) * p + labelNoise * (1 - p)
    }

    /// mu(y | x), [M, K].
    public var proposalProbabilities: [Double] {
        switch proposal {
        case .reference: return problem.referenceLogProb.map { exp($0) }
        case .uniform:
            return [Double](repeating: 1 / Double(problem.responses), count: problem.contexts * problem.responses)
        }
    }

    /// Labelled pair number i (0 <= i < 2^32).
    public func pair(_ i: Int) -> ToyLMPreferencePair {
        var s = PhiloxStream(seed: seed, index: UInt32(i), step: 0, stream: .preferenceLabel)
        let M = problem.contexts, V = problem.vocabulary
        let x = min(M - 1, Int(s.nextUniform() * Double(M)))
        func draw() -> Int {
            switch proposal {
            case .reference:
                return problem.drawResponse(context: x, tokenLogProb: problem.referenceTokenLogProb) { s.nextUniform() }
            case .uniform:
                return (0..<problem.length).reduce(0) { node, _ in
                    node * V + min(V - 1, Int(s.nextUniform() * Double(V)))
                }
            }
        }
        let y = draw(), y2 = draw()
        let firstWins = s.nextUniform() < labelProbability(context: x, y, over: y2)
        return firstWins
            ? ToyLMPreferencePair(context: x, chosen: y, rejected: y2)
            : ToyLMPreferencePair(context: x, chosen: y2, rejected: y)
    }
}

/// Scalar helpers of the toy-LM workloads (a namespace, so the shared TesseraWorkloads module cannot collide).
enum ToyLMMath {
    /// Stable logistic function.
    @inline(__always)
    static func sigmoid(_ v: Double) -> Double {
        if v >= 0 { return 1 / (1 + exp(-v)) }
        let e = exp(v)
        return e / (1 + e)
    }

    /// log sigma(v) = min(v, 0) - log1p(exp(-|v|)), stable for every v.
    @inline(__always)
    static func logSigmoid(_ v: Double) -> Double { min(v, 0) - log1p(exp(-abs(v))) }
}

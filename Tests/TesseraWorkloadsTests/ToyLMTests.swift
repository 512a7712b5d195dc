// The shared toy LM (WORKLOADS.md §2): its tables are the documented pure functions of the spec, the policy starts
// at pi_ref and back-propagates exactly, and the exact tools satisfy their closed forms.

import Foundation
import TesseraCompute
import TesseraCore
import Testing

@testable import TesseraWorkloads

@Suite("Toy LM: problem, policy and exact tools")
struct ToyLMTests {
    static func problem(
        _ kind: ToyLMSpec.ContextKind = .tabular, contexts: Int = 5, vocab: Int = 4, length: Int = 2, seed: UInt64 = 11
    ) throws -> ToyLMProblem {
        ToyLMProblem(
            try ToyLMSpec(
                contexts: contexts, contextKind: kind, featureDimension: 3, vocabulary: vocab, length: length,
                seed: seed,
                referenceScale: 1.3, rewardScale: 0.8, pairwiseScale: 0.6))
    }

    /// Every (kind, L) combination the tests sweep.
    static let shapes: [(ToyLMSpec.ContextKind, Int)] = [
        (.tabular, 1), (.tabular, 2), (.tabular, 3), (.features, 1), (.features, 2),
    ]

    @Test("sizes are validated: V^L <= 4096, rows, scales")
    func specValidation() throws {
        #expect(throws: ToyLMError.self) { try ToyLMSpec(contexts: 4, vocabulary: 65, length: 2, seed: 0) }
        #expect(throws: ToyLMError.self) { try ToyLMSpec(contexts: 0, vocabulary: 4, seed: 0) }
        #expect(throws: ToyLMError.self) { try ToyLMSpec(contexts: 4, vocabulary: 1, seed: 0) }
        #expect(throws: ToyLMError.self) { try ToyLMSpec(contexts: 4, vocabulary: 4, seed: 0, rewardScale: 0) }
        #expect(throws: ToyLMError.self) { try ToyLMSpec(contexts: 64, vocabulary: 2, length: 12, seed: 0) }
        let big = try ToyLMSpec(contexts: 16, vocabulary: 2, length: 12, seed: 0)
        #expect(big.responses == 4096 && big.prefixes == 4095)
        let s = try ToyLMSpec(contexts: 3, vocabulary: 5, length: 3, seed: 0)
        #expect(s.responses == 125 && s.prefixes == 31)
    }

    @Test("the tables are a pure function of the spec and follow the documented Philox layout")
    func tablesAreDocumentedFunctions() throws {
        let a = try Self.problem(), b = try Self.problem()
        #expect(a.reward == b.reward && a.referenceLogits == b.referenceLogits)
        let c = try Self.problem(seed: 12)
        #expect(a.reward != c.reward && a.referenceLogits != c.referenceLogits)

        // Tabular, L = 2: recompute every table from Philox(seed; index, table, stream 2) by hand.
        let p = a, V = 4, K = 16, P = 5
        func normals(_ table: UInt32, _ index: Int, _ n: Int) -> [Double] {
            var s = PhiloxStream(seed: 11, index: UInt32(index), step: table, stream: .dataDraw)
            return s.normals(n)
        }
        for x in 0..<5 {
            for node in 0..<P {
                let z = normals(1, x * P + node, V)
                for v in 0..<V { #expect(p.referenceLogits[(x * P + node) * V + v] == 1.3 * z[v]) }
            }
            let tokenTerm = normals(2, x, V)
            for y in 0..<K {
                let (y0, y1) = (y / V, y % V)
                let pair = normals(3, y0, V)[y1]
                let expected = 0.8 * ((tokenTerm[y0] + tokenTerm[y1]) / 2 + 0.6 * pair / 1)
                #expect(abs(p.reward[x * K + y] - expected) < 1e-15)
            }
        }
        // Features, L = 1: logits are W x / sqrt(d) with W per node, reward U x / sqrt(d).
        let f = try Self.problem(.features, length: 1)
        for x in 0..<5 {
            let feat = normals(0, x, 3)
            #expect(Array(f.features[(x * 3)..<(x * 3 + 3)]) == feat)
            let w = normals(1, 0, V * 3)
            for v in 0..<V {
                let logit = 1.3 * (0..<3).reduce(0.0) { $0 + w[v * 3 + $1] * feat[$1] } / 3.0.squareRoot()
                #expect(abs(f.referenceLogits[x * V + v] - logit) < 1e-14)
                let u = normals(2, v, 3)
                let r = 0.8 * (0..<3).reduce(0.0) { $0 + u[$1] * feat[$1] } / 3.0.squareRoot()
                #expect(abs(f.reward[x * V + v] - r) < 1e-14)
            }
        }
    }

    @Test("indexing: tokens, prefixes and rows agree, and pi_ref sums to 1 over the responses of each context")
    func indexingAndNormalisation() throws {
        for (kind, L) in Self.shapes {
            let p = try Self.problem(kind, vocab: 3, length: L)
            let K = p.responses
            for x in 0..<p.contexts {
                var total = 0.0
                for y in 0..<K {
                    // log pi_ref(y|x) is the sum of the token log-probs along y's rows.
                    var lp = 0.0
                    for (t, row) in p.rows(context: x, response: y).enumerated() {
                        #expect(row == p.row(context: x, level: t, node: p.prefix(y, length: t)))
                        lp += p.referenceTokenLogProb[row * p.vocabulary + p.token(y, at: t)]
                    }
                    #expect(abs(lp - p.referenceLogProb[x * K + y]) < 1e-12)
                    let rebuilt = (0..<L).reduce(0) { $0 * p.vocabulary + p.token(y, at: $1) }
                    #expect(rebuilt == y)
                    total += exp(p.referenceLogProb[x * K + y])
                }
                #expect(abs(total - 1) < 1e-12)
            }
        }
    }

    @Test("the policy starts exactly at pi_ref, and its input encodes context, position and previous tokens")
    func policyStartsAtReference() throws {
        for (kind, L) in Self.shapes {
            let p = try Self.problem(kind, vocab: 3, length: L)
            var policy = try ToyLMPolicy(problem: p, hidden: [8], activation: .relu, seed: 5)
            try policy.evaluate()
            #expect(zip(policy.logProb, p.referenceLogProb).allSatisfy { abs($0 - $1) < 1e-12 })
            let last = policy.model.layerCount - 1
            #expect(
                policy.model.parameters[
                    policy.model.weightRange(last).lowerBound..<policy.model.biasRange(last).upperBound
                ].allSatisfy { $0 == 0 })
        }
        // L = 3, tabular: row (x=1, t=2, node = tokens (2, 0)) is one-hot at x, position 2, token 2 at slot 0, token 0 at slot 1.
        let p = try Self.problem(vocab: 3, length: 3)
        let n = ToyLMPolicy.inputSize(p)
        #expect(n == 5 + 3 + 2 * 3)
        let inputs = ToyLMPolicy.encode(p)
        let row = p.row(context: 1, level: 2, node: 2 * 3 + 0)
        let hot = (0..<n).filter { inputs[row * n + $0] == 1 }
        #expect(hot == [1, 5 + 2, 5 + 3 + 0 * 3 + 2, 5 + 3 + 1 * 3 + 0])
        #expect((0..<n).allSatisfy { inputs[row * n + $0] == 0 || inputs[row * n + $0] == 1 })
    }

    @Test("backward through the prefix tree and the MLP matches finite differences")
    func backwardMatchesFiniteDifferences() throws {
        for (kind, L) in Self.shapes {
            let p = try Self.problem(kind, vocab: 3, length: L)
            var policy = try ToyLMPolicy(problem: p, hidden: [6], activation: .silu, seed: 9)
            // Move off the zero last layer so every path carries gradient.
            var s = PhiloxStream(seed: 1, index: 0, step: 0, stream: .minibatch)
            let noise = s.normals(policy.model.parameterCount)
            for i in 0..<policy.model.parameterCount { policy.model.parameters[i] += 0.3 * noise[i] }
            // A fixed linear functional of the sequence log-probs: loss = sum g * log pi.
            let g = s.normals(p.contexts * p.responses)
            func loss(_ params: [Double]) throws -> Double {
                var q = policy
                q.model.parameters = params
                try q.evaluate()
                return zip(g, q.logProb).reduce(0) { $0 + $1.0 * $1.1 }
            }
            try policy.evaluate()
            try policy.backward(sequenceGradient: g)
            let params = policy.model.parameters
            for i in stride(from: 0, to: params.count, by: max(1, params.count / 25)) {
                var plus = params, minus = params
                plus[i] += 1e-6
                minus[i] -= 1e-6
                let fd = (try loss(plus) - loss(minus)) / 2e-6
                #expect(abs(fd - policy.model.gradients[i]) < 1e-6 * max(1, abs(fd)), "\(kind) L=\(L) parameter \(i)")
            }
        }
    }

    @Test("sampling draws responses with the policy's probabilities")
    func samplingFollowsThePolicy() throws {
        let p = try Self.problem(vocab: 3, length: 2)
        var policy = try ToyLMPolicy(problem: p, hidden: [], activation: .relu, seed: 1)
        try policy.evaluate()
        let n = 60_000
        var counts = [Int](repeating: 0, count: p.responses)
        for i in 0..<n {
            var s = PhiloxStream(seed: 4, index: UInt32(i), step: 1, stream: .action)
            counts[policy.sample(context: 2, stream: &s)] += 1
        }
        for y in 0..<p.responses {
            let q = exp(p.referenceLogProb[2 * p.responses + y])
            #expect(abs(Double(counts[y]) / Double(n) - q) < 5 * (q * (1 - q) / Double(n)).squareRoot() + 1e-9)
        }
    }

    @Test("Gibbs optimum: J* bounds J, J* - J = beta KL(pi || pi*), and pi* attains J*")
    func gibbsClosedForms() throws {
        for (kind, L) in Self.shapes {
            let p = try Self.problem(kind, vocab: 3, length: L)
            for beta in [0.05, 0.3, 1.0, 7.0] {
                let star = p.gibbsLogProb(beta: beta)
                let atStar = p.exactMetrics(logProb: star, beta: beta)
                #expect(abs(atStar.klToOptimum) < 1e-12)
                #expect(abs(atStar.objectiveGap) < 1e-12)
                #expect(abs(atStar.objective - p.optimalObjective(beta: beta)) < 1e-12)
                let f = p.frontierPoint(beta: beta)
                #expect(abs(f.klToReference - atStar.klToReference) < 1e-12)
                #expect(abs(f.expectedReward - atStar.expectedReward) < 1e-12)
                // Random policies (softmax of Gaussian logits per context) never beat J*.
                for trial in 0..<5 {
                    var s = PhiloxStream(seed: 77, index: UInt32(trial), step: 0, stream: .minibatch)
                    let z = s.normals(p.contexts * p.responses)
                    var logProb = [Double](repeating: 0, count: z.count)
                    for x in 0..<p.contexts {
                        let row = Array(z[(x * p.responses)..<((x + 1) * p.responses)])
                        let m = row.max()!
                        let lse = m + log(row.reduce(0) { $0 + exp($1 - m) })
                        for y in 0..<p.responses { logProb[x * p.responses + y] = row[y] - lse }
                    }
                    let e = p.exactMetrics(logProb: logProb, beta: beta)
                    #expect(e.objective <= e.optimalObjective + 1e-12)
                    #expect(abs(e.objectiveGap - beta * e.klToOptimum) < 1e-10 * max(1, e.objectiveGap))
                    #expect(e.klToOptimum > 0 && e.klToReference > 0)
                }
            }
        }
    }

    @Test("the frontier is monotone in beta, and frontierDistance measures the distance to the curve")
    func frontierGeometry() throws {
        let p = try Self.problem(length: 1)
        var previous = p.frontierPoint(beta: 100)
        for beta in [30.0, 10, 3, 1, 0.3, 0.1, 0.03] {
            let f = p.frontierPoint(beta: beta)
            #expect(f.klToReference > previous.klToReference)
            #expect(f.expectedReward > previous.expectedReward)
            #expect(p.frontierDistance(f) < 1e-9)
            previous = f
        }
        // The reference itself is the curve's beta -> infinity end.
        let refReward =
            (0..<p.contexts * p.responses).reduce(0.0) { $0 + exp(p.referenceLogProb[$1]) * p.reward[$1] }
            / Double(p.contexts)
        #expect(p.frontierDistance(ToyLMFrontierPoint(klToReference: 0, expectedReward: refReward)) < 1e-6)
        // A point 0.05 below the frontier at the same KL is at most 0.05 away, and clearly not on it.
        let f = p.frontierPoint(beta: 0.5)
        let below = ToyLMFrontierPoint(klToReference: f.klToReference, expectedReward: f.expectedReward - 0.05)
        let d = p.frontierDistance(below)
        #expect(d > 0.01 && d <= 0.05 + 1e-12)
    }

    @Test("the annotator: pairs are pure functions of (seed, index), drawn from mu, labelled by Bradley-Terry")
    func annotator() throws {
        let p = ToyLMProblem(try ToyLMSpec(contexts: 1, vocabulary: 2, seed: 3, rewardScale: 2))
        let bt = BradleyTerryAnnotator(problem: p, proposal: .uniform, seed: 9)
        #expect(bt.pair(17) == bt.pair(17))
        #expect(
            (0..<50).map(bt.pair) != (0..<50).map(BradleyTerryAnnotator(problem: p, proposal: .uniform, seed: 10).pair))
        let better = p.reward[0] > p.reward[1] ? 0 : 1
        let pWin = bt.preferenceProbability(context: 0, better, over: 1 - better)
        #expect(pWin > 0.5)
        var distinct = 0, betterWins = 0, first0 = 0
        let n = 40_000
        for i in 0..<n {
            let q = bt.pair(i)
            if q.chosen != q.rejected {
                distinct += 1
                if q.chosen == better { betterWins += 1 }
            }
            if q.chosen == 0 || q.rejected == 0 { first0 += 1 }
        }
        // Uniform proposal: half of the pairs are distinct; among them the better response wins w.p. sigma(|dr|).
        #expect(abs(Double(distinct) / Double(n) - 0.5) < 5 * (0.25 / Double(n)).squareRoot())
        let rate = Double(betterWins) / Double(distinct)
        #expect(abs(rate - pWin) < 5 * (pWin * (1 - pWin) / Double(distinct)).squareRoot())
        #expect(first0 > 0)
    }
}

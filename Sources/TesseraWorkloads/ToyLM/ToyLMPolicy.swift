// The trainable policy of the toy LM: frozen reference logits plus an MLP delta (WORKLOADS.md §2).
//
// pi_theta(v | x, prefix) = softmax(l_ref(x, prefix) + Delta_theta(input(x, prefix)))_v, where Delta_theta is an MLP
// (torch.nn.Linear layers, float64) whose last layer starts at zero, so training starts exactly at pi_ref.
// input(x, prefix) = [context part | position one-hot (L) | previous tokens one-hot ((L-1) V)], the last two only
// when L >= 2; the context part is one-hot(x) for tabular contexts and the feature vector for features contexts.
//
// Every step evaluates the whole table: one forward pass over all M P rows gives log pi(v | x, prefix) for every
// row and log pi(y | x) for every (x, y). A loss that is a function of the sequence log-probs then only has to say
// dLoss/dlog pi(y|x) for each (x, y) (`backward(sequenceGradient:)`): the gradient reaches the logits through the
// prefix tree (d/dlogit_v of row (x, t, p) = G(p v) - pi(v | x, p) G(p), where G(node) sums the sequence
// gradients of the responses below that node) and the MLP through one backward pass.

import Foundation
import TesseraCompute

public struct ToyLMPolicy: Sendable {
    public let problem: ToyLMProblem
    /// Delta_theta; its state-dict names are `layers.<l>.weight` / `layers.<l>.bias`.
    public var model: MLP<Double>
    var workspace: MLPWorkspace<Double>
    /// The network input of every row, [M P, in].
    let inputs: [Double]
    /// log pi_theta(v | x, prefix) for every row, [M P, V], as of the last `evaluate()`.
    public private(set) var tokenLogProb: [Double]
    /// log pi_theta(y | x), [M, K], as of the last `evaluate()`.
    public private(set) var logProb: [Double]
    /// dLoss/dlogits per row, scratch for `backward`.
    var logitGradient: [Double]

    /// The width of the network input for `problem`.
    public static func inputSize(_ problem: ToyLMProblem) -> Int {
        let ctx = problem.spec.contextKind == .tabular ? problem.contexts : problem.spec.featureDimension
        let L = problem.length
        return ctx + (L >= 2 ? L + (L - 1) * problem.vocabulary : 0)
    }

    /// [in, hidden..., V] for `problem`.
    public static func layerSizes(_ problem: ToyLMProblem, hidden: [Int]) -> [Int] {
        [inputSize(problem)] + hidden + [problem.vocabulary]
    }

    /// A fresh policy: PyTorch's default init from Philox(seed; stream 8) for the hidden layers, the last layer zero.
    public init(problem: ToyLMProblem, hidden: [Int], activation: Activation, seed: UInt64) throws {
        var model = try MLP<Double>(
            sizes: Self.layerSizes(problem, hidden: hidden), activation: hidden.isEmpty ? .identity : activation,
            seed: seed)
        let last = model.layerCount - 1
        for i in model.weightRange(last).lowerBound..<model.biasRange(last).upperBound { model.parameters[i] = 0 }
        try self.init(problem: problem, model: model)
    }

    /// A policy with the given network (from a checkpoint); throws if its shape does not fit `problem`.
    public init(problem: ToyLMProblem, model: MLP<Double>) throws {
        guard model.inputSize == Self.inputSize(problem), model.outputSize == problem.vocabulary else {
            throw ToyLMError(
                .checkpointMismatch,
                "the network maps \(model.inputSize) -> \(model.outputSize); this problem needs \(Self.inputSize(problem)) -> \(problem.vocabulary)"
            )
        }
        self.problem = problem
        self.model = model
        let rows = problem.contexts * problem.prefixes
        workspace = model.makeWorkspace(batchCapacity: rows)
        inputs = Self.encode(problem)
        tokenLogProb = [Double](repeating: 0, count: rows * problem.vocabulary)
        logProb = [Double](repeating: 0, count: problem.contexts * problem.responses)
        logitGradient = tokenLogProb
    }

    static func encode(_ problem: ToyLMProblem) -> [Double] {
        let n = inputSize(problem), M = problem.contexts, V = problem.vocabulary, L = problem.length
        let d = problem.spec.featureDimension
        let ctx = problem.spec.contextKind == .tabular ? M : d
        var inputs = [Double](repeating: 0, count: M * problem.prefixes * n)
        for x in 0..<M {
            var width = 1
            for t in 0..<L {
                for node in 0..<width {
                    let base = problem.row(context: x, level: t, node: node) * n
                    if problem.spec.contextKind == .tabular {
                        inputs[base + x] = 1
                    } else {
                        for j in 0..<d { inputs[base + j] = problem.features[x * d + j] }
                    }
                    if L >= 2 {
                        inputs[base + ctx + t] = 1
                        // The node's t tokens, most significant first.
                        var rest = node
                        for j in stride(from: t - 1, through: 0, by: -1) {
                            inputs[base + ctx + L + j * V + rest % V] = 1
                            rest /= V
                        }
                    }
                }
                width *= V
            }
        }
        return inputs
    }

    // MARK: Forward

    /// One forward pass over every row: refreshes `tokenLogProb` and `logProb`.
    public mutating func evaluate() throws {
        let rows = problem.contexts * problem.prefixes, V = problem.vocabulary
        try inputs.withUnsafeBufferPointer { try model.forward($0, batch: rows, workspace: &workspace) }
        let ref = problem.referenceLogits
        workspace.withOutput { delta in
            for i in 0..<tokenLogProb.count { tokenLogProb[i] = ref[i] + delta[i] }
        }
        ToyLMProblem.logSoftmaxRows(&tokenLogProb, width: V)
        ToyLMProblem.sequenceLogProbs(
            tokenLogProb: tokenLogProb, contexts: problem.contexts, vocabulary: V, length: problem.length,
            prefixes: problem.prefixes, offsets: problem.levelOffsets, into: &logProb)
    }

    // MARK: Backward

    /// Writes dLoss/dtheta into `model.gradients` for a loss whose gradient with respect to log pi(y|x) is
    /// `sequenceGradient` ([M, K]), at the policy of the last `evaluate()`.
    public mutating func backward(sequenceGradient g: [Double]) throws {
        let M = problem.contexts, V = problem.vocabulary, L = problem.length, K = problem.responses
        let P = problem.prefixes
        precondition(g.count == M * K, "sequenceGradient must be [M, K]")
        // Subtree sums, level by level from the leaves up: sums[node] for the current level.
        var sums = [Double](repeating: 0, count: K)
        var parent = [Double](repeating: 0, count: K)
        let offsets = problem.levelOffsets
        tokenLogProb.withUnsafeBufferPointer { tlp in
            logitGradient.withUnsafeMutableBufferPointer { lg in
                g.withUnsafeBufferPointer { gp in
                    for x in 0..<M {
                        for y in 0..<K { sums[y] = gp[x * K + y] }
                        var width = K / V
                        for t in stride(from: L - 1, through: 0, by: -1) {
                            let rowBase = (x * P + offsets[t]) * V
                            for p in 0..<width {
                                var total = 0.0
                                for v in 0..<V { total += sums[p * V + v] }
                                parent[p] = total
                                let r = rowBase + p * V
                                for v in 0..<V { lg[r + v] = sums[p * V + v] - exp(tlp[r + v]) * total }
                            }
                            swap(&sums, &parent)
                            width /= V
                        }
                    }
                }
            }
        }
        try logitGradient.withUnsafeBufferPointer { try model.backward($0, workspace: &workspace) }
    }

    /// Writes dLoss/dtheta into `model.gradients` for a loss of the token log-probabilities: `tokenGradient`
    /// ([M P, V]) holds dLoss/dlog pi(v | x, prefix) for every row, at the policy of the last `evaluate()`.
    /// Per row, d/dlogit_v = T_v - pi(v | row) sum_u T_u. (A loss of sequence log-probs is the special case
    /// T(p, v) = G(p v), which `backward(sequenceGradient:)` computes without the table.)
    public mutating func backward(tokenGradient g: [Double]) throws {
        let V = problem.vocabulary
        precondition(g.count == tokenLogProb.count, "tokenGradient must be [M P, V]")
        tokenLogProb.withUnsafeBufferPointer { tlp in
            logitGradient.withUnsafeMutableBufferPointer { lg in
                g.withUnsafeBufferPointer { gp in
                    for r in stride(from: 0, to: gp.count, by: V) {
                        var total = 0.0
                        for v in 0..<V { total += gp[r + v] }
                        for v in 0..<V { lg[r + v] = gp[r + v] - exp(tlp[r + v]) * total }
                    }
                }
            }
        }
        try logitGradient.withUnsafeBufferPointer { try model.backward($0, workspace: &workspace) }
    }

    // MARK: Sampling and per-token statistics

    /// Draws a response for context x from the policy of the last `evaluate()`, one uniform per token (inverse CDF
    /// over the token probabilities in vocabulary order).
    public func sample(context x: Int, stream: inout PhiloxStream) -> Int {
        problem.drawResponse(context: x, tokenLogProb: tokenLogProb) { stream.nextUniform() }
    }

    /// Entropy of pi_theta(. | row) in nats.
    public func entropy(row: Int) -> Double {
        let V = problem.vocabulary
        var h = 0.0
        for v in 0..<V {
            let lp = tokenLogProb[row * V + v]
            let p = exp(lp)
            if p > 0 { h -= p * lp }
        }
        return h
    }
}

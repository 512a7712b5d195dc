// The one error type of the toy language model and the training algorithms built on it (STYLE.md §2).

/// Everything the toy-LM workloads can reject: a problem that is too large or malformed, training settings out of
/// range, a checkpoint that does not belong to the shard, and shard summaries the merge cannot read.
public struct ToyLMError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case invalidProblem, invalidConfig, checkpointMismatch, malformedSummary
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// Sizes or scales of the toy problem are out of range (e.g. V^L > 4096).
        public static let invalidProblem = Code(.invalidProblem)
        /// A training setting is out of range (beta, learning rate, group size, ...).
        public static let invalidConfig = Code(.invalidConfig)
        /// A resume checkpoint was written by another algorithm, configuration or problem.
        public static let checkpointMismatch = Code(.checkpointMismatch)
        /// A shard summary given to the merge lacks a field or has the wrong type.
        public static let malformedSummary = Code(.malformedSummary)

        public var description: String { base.rawValue }
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "toy-lm \(code): \(message)" }
}

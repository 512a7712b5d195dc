// The one error type of the sampling workload (STYLE.md §2 "Error handling": a code plus a human message).

/// Everything the sampling workload can reject: bad targets, schedules and configs, misaligned shard ranges,
/// incomplete or overlapping shard sets, and malformed shard-result bytes.
public struct SamplingError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case invalidTarget, invalidSchedule, invalidConfig, invalidRange, coverage, malformedResult
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The Gaussian mixture is malformed (counts, dimensions, weights or stds).
        public static let invalidTarget = Code(.invalidTarget)
        /// The beta schedule parameters are out of range.
        public static let invalidSchedule = Code(.invalidSchedule)
        /// Sampling steps, eta or the sample count are out of range.
        public static let invalidConfig = Code(.invalidConfig)
        /// A shard range is empty, out of [0, N), or not aligned to `SamplingPlan.blockSize`.
        public static let invalidRange = Code(.invalidRange)
        /// The shards given to `mergeSampling` leave a gap, overlap, or do not end at N.
        public static let coverage = Code(.coverage)
        /// Serialized shard-result bytes do not have the expected tensors, shapes or metadata.
        public static let malformedResult = Code(.malformedResult)

        public var description: String { base.rawValue }
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "sampling \(code): \(message)" }
}

// The vocabulary every layer shares (store, protocol, coordinator, worker): one type per domain notion, so data is
// not translated from one near-identical struct to another at every hop. Pure Swift, no dependencies.

/// (job, shard, attempt): names one attempt of one shard. The attempt is the fencing token: every message about a
/// shard carries it, and only the current attempt's leaseholder may change anything (protocol/SPEC.md §6.3).
public struct ShardRef: Sendable, Hashable, Codable, CustomStringConvertible {
    public var jobID: Int64
    public var shardIndex: Int32
    public var attempt: Int32
    public init(jobID: Int64, shardIndex: Int32, attempt: Int32) {
        self.jobID = jobID
        self.shardIndex = shardIndex
        self.attempt = attempt
    }
    public var description: String { "job \(jobID) shard \(shardIndex) attempt \(attempt)" }
}

/// One metric value: `name` at `step`. Equality and hashing are bitwise on the value, so NaN equals NaN and a
/// replayed batch is recognised as the same.
public struct MetricPoint: Sendable, Hashable {
    public var name: String
    public var step: Int64
    public var value: Double
    public init(name: String, step: Int64, value: Double) {
        self.name = name
        self.step = step
        self.value = value
    }
    public static func == (a: MetricPoint, b: MetricPoint) -> Bool {
        a.name == b.name && a.step == b.step && a.value.bitPattern == b.value.bitPattern
    }
    public func hash(into hasher: inout Hasher) {
        hasher.combine(name)
        hasher.combine(step)
        hasher.combine(value.bitPattern)
    }
}

/// What a blob transfer carries.
public enum BlobKind: UInt8, Sendable {
    case checkpoint = 1
    case samples = 2
    case result = 3

    /// The name stored in PostgreSQL (`tessera_checkpoints.kind`) and used in client requests.
    public var name: String {
        switch self {
        case .checkpoint: "checkpoint"
        case .samples: "samples"
        case .result: "result"
        }
    }
}

/// A shard attempt leased to a worker (by the worker's database id).
public struct Lease: Sendable, Hashable {
    public var ref: ShardRef
    public var workerID: Int64
    public init(ref: ShardRef, workerID: Int64) {
        self.ref = ref
        self.workerID = workerID
    }
}

/// A checkpoint a shard resumes from.
public struct ResumePoint: Sendable, Hashable {
    public var step: Int64
    public var sha256: String
    public var size: Int64
    public init(step: Int64, sha256: String, size: Int64) {
        self.step = step
        self.sha256 = sha256
        self.size = size
    }
}

/// A shard just leased to a worker, with everything needed to dispatch it.
public struct ClaimedShard: Sendable, Hashable {
    public var ref: ShardRef
    public var kind: String
    public var algorithm: String
    public var seed: UInt64
    /// The job's canonical spec and the shard's slice, as stored (JSON text).
    public var spec: String
    public var slice: String
    public var totalSteps: Int64
    public var resume: ResumePoint?
    public init(
        ref: ShardRef, kind: String, algorithm: String, seed: UInt64, spec: String, slice: String, totalSteps: Int64,
        resume: ResumePoint?
    ) {
        self.ref = ref
        self.kind = kind
        self.algorithm = algorithm
        self.seed = seed
        self.spec = spec
        self.slice = slice
        self.totalSteps = totalSteps
        self.resume = resume
    }
}

/// What a reported shard failure did.
public enum ShardFailureOutcome: Sendable, Equatable {
    /// Stale attempt or not the leaseholder: nothing changed.
    case rejected
    /// Back in the queue (infrastructure loss, or an own error with attempts left).
    case requeued
    /// Out of attempts: the shard and its job failed (its other leases are returned to stop).
    case jobFailed
}

/// Job, shard and worker states as stored (migrations/0001: the `tessera_*_state` enums) and as replies name them
/// (protocol/SPEC.md §6.9).
public enum JobState: String, Sendable, CaseIterable, Codable {
    case queued, running, succeeded, failed, cancelled
    public var isTerminal: Bool { self == .succeeded || self == .failed || self == .cancelled }
}

public enum ShardState: String, Sendable, CaseIterable, Codable {
    case queued, leased, succeeded, failed, cancelled
    public var isTerminal: Bool { self == .succeeded || self == .failed || self == .cancelled }
}

public enum WorkerState: String, Sendable, CaseIterable, Codable {
    /// Registered and heartbeating.
    case alive
    /// Missed its heartbeats (or the coordinator restarted); its leases were requeued.
    case lost
    /// Disconnected on its own (drained) or re-registered under the same name.
    case gone
}

/// How a failed attempt counts (SPEC §5, SHARD_FAILED `failure`). The byte was a bool before `permanent` existed:
/// 0 and 1 mean what they meant.
public enum ShardFailureKind: UInt8, Sendable, Hashable {
    /// The shard's own error: charged against `max_attempts`, re-queued while attempts remain.
    case shardError = 0
    /// Infrastructure (drain, no free slot, cancelled by a lease move, a fetch timed out): re-queued, not charged.
    case infrastructure = 1
    /// An error no retry can fix (the spec, slice or inputs are wrong): charged, and the job fails at once.
    case permanent = 2
}

/// Severity of a shard log line: swift-log's levels, in their order, as one byte on the wire (SPEC §5 LOGS).
public enum LogLevel: UInt8, Sendable, Hashable, CaseIterable {
    case trace = 0
    case debug = 1
    case info = 2
    case notice = 3
    case warning = 4
    case error = 5
    case critical = 6

    /// The name `tessera logs` prints and stores ("info", "warning", …), as swift-log spells it.
    public var name: String {
        switch self {
        case .trace: "trace"
        case .debug: "debug"
        case .info: "info"
        case .notice: "notice"
        case .warning: "warning"
        case .error: "error"
        case .critical: "critical"
        }
    }

    public init?(name: String) {
        guard let l = Self.allCases.first(where: { $0.name == name }) else { return nil }
        self = l
    }
}

/// One line of a shard attempt's log: when the worker wrote it (seconds since 1970-01-01 UTC), how severe, what.
public struct LogLine: Sendable, Hashable {
    public var time: Double
    public var level: LogLevel
    public var message: String
    public init(time: Double, level: LogLevel, message: String) {
        self.time = time
        self.level = level
        self.message = message
    }
    /// Bitwise on `time`, as `MetricPoint` is on its value (the wire keeps the bit pattern).
    public static func == (a: LogLine, b: LogLine) -> Bool {
        a.time.bitPattern == b.time.bitPattern && a.level == b.level && a.message == b.message
    }
    public func hash(into hasher: inout Hasher) {
        hasher.combine(time.bitPattern)
        hasher.combine(level)
        hasher.combine(message)
    }
    /// The most UTF-8 bytes of a message a worker sends and a coordinator stores (longer ones are cut at a character
    /// boundary, SPEC §5 LOGS).
    public static let maxMessageBytes = 4096

    /// `message` cut to at most `maxMessageBytes` bytes of UTF-8, at a character boundary.
    public static func clip(_ message: String) -> String {
        guard message.utf8.count > maxMessageBytes else { return message }
        var out = ""
        var bytes = 0
        for c in message {
            let n = c.utf8.count
            if bytes + n > maxMessageBytes { break }
            out.append(c)
            bytes += n
        }
        return out
    }
}

/// One LOGS batch as the writer stores it (`JobStore.ingestLogs`): fenced on (ref, workerID); (ref, sequence) is
/// stored once, however often the worker replays it.
public struct ShardLogBatch: Sendable, Hashable {
    public var ref: ShardRef
    public var workerID: Int64
    public var sequence: UInt64
    public var lines: [LogLine]
    public init(ref: ShardRef, workerID: Int64, sequence: UInt64, lines: [LogLine]) {
        self.ref = ref
        self.workerID = workerID
        self.sequence = sequence
        self.lines = lines
    }
}

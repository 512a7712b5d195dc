// Protocol v1 message values (protocol/SPEC.md §5). Plain Sendable values; WireCodec turns them into frames.
// ShardRef, MetricPoint and BlobKind are the shared domain types of TesseraModel, re-exported here.

@_exported import TesseraModel

/// Progress of one running shard, reported in worker heartbeats.
public struct ShardProgress: Sendable, Hashable {
    public var ref: ShardRef
    public var step: Int64
    public var total: Int64
    public init(ref: ShardRef, step: Int64, total: Int64) {
        self.ref = ref
        self.step = step
        self.total = total
    }
}

/// One metric sample. `value` travels as its IEEE-754 bit pattern, so NaN payloads, infinities and -0.0
/// survive the wire bit-exactly; equality and hashing are bitwise for the same reason (NaN == NaN here).

/// worker -> coordinator, first message after every (re)connect.
public struct Ready: Sendable, Hashable {
    public var protocolVersion: UInt16
    public var workerName: String
    public var host: String
    /// Total shard slots of this worker (its credits right after READY, minus `running.count`).
    public var slots: UInt16
    public var capabilities: [String]
    /// Shards the worker still holds after a reconnect; the coordinator re-adopts or cancels each.
    public var running: [ShardRef]
    public init(
        protocolVersion: UInt16 = WireCodec.version, workerName: String, host: String, slots: UInt16,
        capabilities: [String] = [], running: [ShardRef] = []
    ) {
        self.protocolVersion = protocolVersion
        self.workerName = workerName
        self.host = host
        self.slots = slots
        self.capabilities = capabilities
        self.running = running
    }
}

/// Both directions, every heartbeat interval. worker -> coordinator: current free slots and progress.
/// coordinator -> worker: `credits` 0 and empty `progress`.
public struct Heartbeat: Sendable, Hashable {
    public var credits: UInt16
    public var progress: [ShardProgress]
    public init(credits: UInt16 = 0, progress: [ShardProgress] = []) {
        self.credits = credits
        self.progress = progress
    }
}

/// A stored checkpoint a dispatched shard resumes from (fetch it with `Fetch` by `sha256`).
public struct CheckpointInfo: Sendable, Hashable {
    public var step: Int64
    /// 64 lowercase hex characters.
    public var sha256: String
    public var size: UInt64
    public init(step: Int64, sha256: String, size: UInt64) {
        self.step = step
        self.sha256 = sha256
        self.size = size
    }
}

/// coordinator -> worker: run this shard attempt. Consumes one credit.
public struct Dispatch: Sendable, Hashable {
    public var ref: ShardRef
    public var kind: String
    public var algorithm: String
    public var seed: UInt64
    /// JSON (UTF-8) job spec.
    public var spec: [UInt8]
    /// JSON (UTF-8) description of this shard's slice.
    public var slice: [UInt8]
    public var resume: CheckpointInfo?
    public var totalSteps: Int64
    public init(
        ref: ShardRef, kind: String, algorithm: String, seed: UInt64, spec: [UInt8], slice: [UInt8],
        resume: CheckpointInfo? = nil, totalSteps: Int64
    ) {
        self.ref = ref
        self.kind = kind
        self.algorithm = algorithm
        self.seed = seed
        self.spec = spec
        self.slice = slice
        self.resume = resume
        self.totalSteps = totalSteps
    }
}

/// worker -> coordinator: a batch of metric points; acked (kind .metrics, sequence) after the DB commit.
public struct MetricsBatch: Sendable, Hashable {
    public var ref: ShardRef
    /// Per (shard, attempt), starting at 0 and increasing by 1; lets the coordinator drop duplicates.
    public var sequence: UInt64
    public var points: [MetricPoint]
    public init(ref: ShardRef, sequence: UInt64, points: [MetricPoint]) {
        self.ref = ref
        self.sequence = sequence
        self.points = points
    }
}

/// worker -> coordinator: a batch of a shard attempt's log lines; acked (kind .logs, sequence) after the DB commit.
public struct LogBatch: Sendable, Hashable {
    public var ref: ShardRef
    /// Per (shard, attempt), starting at 0 and increasing by 1, independent of METRICS' sequence.
    public var sequence: UInt64
    public var lines: [LogLine]
    public init(ref: ShardRef, sequence: UInt64, lines: [LogLine]) {
        self.ref = ref
        self.sequence = sequence
        self.lines = lines
    }
}

/// worker -> coordinator: one chunk of a blob transfer; `data` travels as the blob frame.
public struct BlobChunk: Sendable, Hashable {
    public var ref: ShardRef
    public var transferID: UInt64
    public var kind: BlobKind
    public var step: Int64
    public var offset: UInt64
    public var totalSize: UInt64
    public var isLast: Bool
    /// Lowercase hex sha256 of the whole blob when `isLast`; "" otherwise.
    public var sha256: String
    public var data: [UInt8]
    public init(
        ref: ShardRef, transferID: UInt64, kind: BlobKind, step: Int64, offset: UInt64, totalSize: UInt64,
        isLast: Bool, sha256: String, data: [UInt8]
    ) {
        self.ref = ref
        self.transferID = transferID
        self.kind = kind
        self.step = step
        self.offset = offset
        self.totalSize = totalSize
        self.isLast = isLast
        self.sha256 = sha256
        self.data = data
    }
}

/// worker -> coordinator: the shard attempt finished successfully.
public struct ShardDone: Sendable, Hashable {
    public var ref: ShardRef
    /// JSON (UTF-8) shard summary, merged by the coordinator.
    public var summary: [UInt8]
    /// sha256 of a result blob transferred before this message, or "".
    public var resultSHA256: String
    public init(ref: ShardRef, summary: [UInt8], resultSHA256: String = "") {
        self.ref = ref
        self.summary = summary
        self.resultSHA256 = resultSHA256
    }
}

/// worker -> coordinator: the shard attempt failed.
public struct ShardFailed: Sendable, Hashable {
    public var ref: ShardRef
    public var reason: String
    public var failure: ShardFailureKind
    /// Re-queued without charging an attempt (`failure == .infrastructure`).
    public var retryable: Bool { failure == .infrastructure }
    public init(ref: ShardRef, reason: String, failure: ShardFailureKind) {
        self.ref = ref
        self.reason = reason
        self.failure = failure
    }
    public init(ref: ShardRef, reason: String, retryable: Bool) {
        self.init(ref: ref, reason: reason, failure: retryable ? .infrastructure : .shardError)
    }
}

/// What an `Ack` acknowledges.
public enum AckKind: UInt8, Sendable {
    case metrics = 1
    case chunk = 2
    case done = 3
    case failed = 4
    case logs = 5
}

/// What the coordinator did with an acknowledged message (SPEC §5, ACK `status`). The byte was a bool before
/// `deferred` existed: 0 and 1 mean what they meant.
public enum AckStatus: UInt8, Sendable, Hashable {
    /// The attempt is stale (fenced): the worker must stop that shard and discard its outputs.
    case refused = 0
    /// Durable.
    case accepted = 1
    /// Not stored now, through no fault of the attempt (the coordinator's data dir is full): the worker keeps the
    /// data and sends it again later, from `offset` for a chunk (SPEC §6.5).
    case deferred = 2
}

/// coordinator -> worker: the referenced message is durable (or was refused because the attempt is fenced, or
/// deferred because the coordinator cannot store it now).
public struct Ack: Sendable, Hashable {
    public var ref: ShardRef
    public var kind: AckKind
    /// metrics: the batch sequence; chunk: the transferID; done/failed: 0.
    public var sequence: UInt64
    /// chunk: bytes durably received so far (the next offset the worker should send); otherwise 0.
    public var offset: UInt64
    public var status: AckStatus
    /// `status == .accepted`.
    public var accepted: Bool { status == .accepted }
    public init(ref: ShardRef, kind: AckKind, sequence: UInt64 = 0, offset: UInt64 = 0, status: AckStatus) {
        self.ref = ref
        self.kind = kind
        self.sequence = sequence
        self.offset = offset
        self.status = status
    }
    public init(ref: ShardRef, kind: AckKind, sequence: UInt64 = 0, offset: UInt64 = 0, accepted: Bool = true) {
        self.init(ref: ref, kind: kind, sequence: sequence, offset: offset, status: accepted ? .accepted : .refused)
    }
}

/// coordinator -> worker: stop this shard attempt now (job cancelled, lease moved, ...).
public struct Cancel: Sendable, Hashable {
    public var ref: ShardRef
    public var reason: String
    public init(ref: ShardRef, reason: String) {
        self.ref = ref
        self.reason = reason
    }
}

/// Either direction: the sender is going away (graceful shutdown); the peer forgets it without waiting for
/// heartbeats to expire.
public struct Disconnect: Sendable, Hashable {
    public var reason: String
    public init(reason: String) {
        self.reason = reason
    }
}

/// worker (or client) -> coordinator: read `length` bytes at `offset` of a stored blob.
public struct Fetch: Sendable, Hashable {
    public var requestID: UInt64
    public var sha256: String
    public var offset: UInt64
    public var length: UInt32
    public init(requestID: UInt64, sha256: String, offset: UInt64, length: UInt32) {
        self.requestID = requestID
        self.sha256 = sha256
        self.offset = offset
        self.length = length
    }
}

/// coordinator -> requester: the bytes asked for by `Fetch`; `data` travels as the blob frame.
public struct FetchReply: Sendable, Hashable {
    public var requestID: UInt64
    public var sha256: String
    public var offset: UInt64
    public var totalSize: UInt64
    public var data: [UInt8]
    /// "" on success; otherwise why nothing was returned (data is then empty).
    public var error: String
    public init(requestID: UInt64, sha256: String, offset: UInt64, totalSize: UInt64, data: [UInt8], error: String = "") {
        self.requestID = requestID
        self.sha256 = sha256
        self.offset = offset
        self.totalSize = totalSize
        self.data = data
        self.error = error
    }
}

/// CLI client -> coordinator: one request (SPEC.md §7 lists the methods).
public struct ClientRequest: Sendable, Hashable {
    public var requestID: UInt64
    public var method: String
    /// JSON (UTF-8) parameters.
    public var body: [UInt8]
    public init(requestID: UInt64, method: String, body: [UInt8]) {
        self.requestID = requestID
        self.method = method
        self.body = body
    }
}

/// coordinator -> CLI client: the reply to the request with the same `requestID`.
public struct ClientReply: Sendable, Hashable {
    public var requestID: UInt64
    /// 0 ok; otherwise one of `WireStatus` (SPEC.md §8).
    public var status: UInt16
    /// JSON (UTF-8) result, or `{"error": "..."}` when status != 0.
    public var body: [UInt8]
    /// Bulk bytes (e.g. a pulled samples file); travels as the blob frame; may be empty.
    public var blob: [UInt8]
    public init(requestID: UInt64, status: UInt16, body: [UInt8], blob: [UInt8] = []) {
        self.requestID = requestID
        self.status = status
        self.body = body
        self.blob = blob
    }
}

/// Either direction: reply to a frame that cannot be processed (SPEC.md §8). Never answered with an ERROR.
public struct ErrorMessage: Sendable, Hashable {
    public var code: UInt16
    public var message: String
    public init(code: UInt16, message: String) {
        self.code = code
        self.message = message
    }
    /// The ERROR to send back for a frame that failed to decode.
    public init(_ error: ProtocolError) {
        self.code = error.code.wireCode
        self.message = String(error.message.prefix(512))
    }
}

/// Every protocol v1 message.
public enum Message: Sendable, Hashable {
    case ready(Ready)
    case heartbeat(Heartbeat)
    case dispatch(Dispatch)
    case metrics(MetricsBatch)
    case logs(LogBatch)
    case chunk(BlobChunk)
    case shardDone(ShardDone)
    case shardFailed(ShardFailed)
    case ack(Ack)
    case cancel(Cancel)
    case disconnect(Disconnect)
    case fetch(Fetch)
    case fetchReply(FetchReply)
    case request(ClientRequest)
    case reply(ClientReply)
    case error(ErrorMessage)

    /// The header type code of this message.
    public var type: MessageType {
        switch self {
        case .ready: .ready
        case .heartbeat: .heartbeat
        case .dispatch: .dispatch
        case .metrics: .metrics
        case .logs: .logs
        case .chunk: .chunk
        case .shardDone: .shardDone
        case .shardFailed: .shardFailed
        case .ack: .ack
        case .cancel: .cancel
        case .disconnect: .disconnect
        case .fetch: .fetch
        case .fetchReply: .fetchReply
        case .request: .request
        case .reply: .reply
        case .error: .error
        }
    }

    /// The shard this message is about, if any (for fencing and logging).
    public var shardRef: ShardRef? {
        switch self {
        case .dispatch(let m): m.ref
        case .metrics(let m): m.ref
        case .logs(let m): m.ref
        case .chunk(let m): m.ref
        case .shardDone(let m): m.ref
        case .shardFailed(let m): m.ref
        case .ack(let m): m.ref
        case .cancel(let m): m.ref
        default: nil
        }
    }
}

/// Header type codes (SPEC.md §4). Values are stable forever; new messages get new codes.
public enum MessageType: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case ready = 0x01
    case heartbeat = 0x02
    case disconnect = 0x03
    case dispatch = 0x10
    case cancel = 0x11
    case metrics = 0x20
    case chunk = 0x21
    case shardDone = 0x22
    case shardFailed = 0x23
    case ack = 0x24
    case logs = 0x25
    case fetch = 0x30
    case fetchReply = 0x31
    case request = 0x40
    case reply = 0x41
    case error = 0x7F

    /// Whether messages of this type carry a third (blob) frame.
    public var hasBlob: Bool {
        switch self {
        case .chunk, .fetchReply, .reply: true
        default: false
        }
    }

    public var description: String {
        switch self {
        case .ready: "READY"
        case .heartbeat: "HEARTBEAT"
        case .disconnect: "DISCONNECT"
        case .dispatch: "DISPATCH"
        case .cancel: "CANCEL"
        case .metrics: "METRICS"
        case .chunk: "CHUNK"
        case .shardDone: "SHARD_DONE"
        case .shardFailed: "SHARD_FAILED"
        case .ack: "ACK"
        case .logs: "LOGS"
        case .fetch: "FETCH"
        case .fetchReply: "FETCH_REPLY"
        case .request: "REQUEST"
        case .reply: "REPLY"
        case .error: "ERROR"
        }
    }
}

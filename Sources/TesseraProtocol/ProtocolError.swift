// Decode errors of the v1 codec (protocol/SPEC.md §8). Follows STYLE.md: a Code struct over a private enum,
// so codes can be added without breaking callers, each with a stable numeric wire code for ERROR messages.

/// A frame set that is not a valid protocol v1 message. Decoding never traps; it throws this.
public struct ProtocolError: Error, Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible {
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        private enum Base: UInt16, Sendable, Hashable {
            case truncated = 1
            case oversize = 2
            case badMagic = 3
            case unsupportedVersion = 4
            case unknownType = 5
            case malformed = 6
            case trailingBytes = 7
            case badUTF8 = 8
            case badFrameCount = 9
            case badEnvelope = 10
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// A field runs past the end of its frame (or the header frame is shorter than 8 bytes).
        public static let truncated = Code(.truncated)
        /// A length, count or frame size exceeds `WireCodec.limits`.
        public static let oversize = Code(.oversize)
        /// The header does not start with the magic bytes "TS".
        public static let badMagic = Code(.badMagic)
        /// The header's version is not one this peer speaks.
        public static let unsupportedVersion = Code(.unsupportedVersion)
        /// The header's type code is not a known message type.
        public static let unknownType = Code(.unknownType)
        /// A field has an invalid value (enum out of range, bool not 0/1, bad sha256, nonzero flags...).
        public static let malformed = Code(.malformed)
        /// The body has bytes left over after its last field.
        public static let trailingBytes = Code(.trailingBytes)
        /// A string field is not valid UTF-8.
        public static let badUTF8 = Code(.badUTF8)
        /// Wrong number of frames for the message type.
        public static let badFrameCount = Code(.badFrameCount)
        /// The ZeroMQ envelope (identity / empty delimiter) is missing or malformed.
        public static let badEnvelope = Code(.badEnvelope)

        /// Stable code carried in `ErrorMessage.code` (SPEC.md §8); 1...99 are decode errors.
        public var wireCode: UInt16 { base.rawValue }

        /// The code for a wire code in 1...99, if known.
        public init?(wireCode: UInt16) {
            guard let base = Base(rawValue: wireCode) else { return nil }
            self.base = base
        }

        public var description: String {
            switch base {
            case .truncated: "truncated"
            case .oversize: "oversize"
            case .badMagic: "badMagic"
            case .unsupportedVersion: "unsupportedVersion"
            case .unknownType: "unknownType"
            case .malformed: "malformed"
            case .trailingBytes: "trailingBytes"
            case .badUTF8: "badUTF8"
            case .badFrameCount: "badFrameCount"
            case .badEnvelope: "badEnvelope"
            }
        }
    }

    public var code: Code
    /// What was wrong, naming the message type and field (never payload bytes).
    public var message: String

    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "ProtocolError(\(code)): \(message)" }
    public var debugDescription: String { "ProtocolError(code: \(code), wireCode: \(code.wireCode), message: \(message))" }
}

/// Status and error codes carried in `ClientReply.status` and `ErrorMessage.code` (SPEC.md §8).
/// 0 is success; 1...99 are `ProtocolError.Code.wireCode`; the rest are listed here.
public enum WireStatus {
    public static let ok: UInt16 = 0

    // 100...199: conversation errors (ERROR messages between coordinator and worker).
    /// The sender has not sent READY on this connection (or the coordinator forgot it): send READY again.
    public static let notReady: UInt16 = 100
    /// Reserved. In v1 a READY whose `workerName` is registered under another identity replaces the old
    /// registration (SPEC.md §6.1).
    public static let duplicateWorker: UInt16 = 101
    /// The message type is not valid in this direction or state (e.g. DISPATCH sent to the coordinator).
    public static let unexpectedMessage: UInt16 = 102
    /// The worker exceeded the transfer credit window (more unacknowledged chunk bytes than allowed).
    public static let creditExceeded: UInt16 = 103

    // 200...299: client request errors (ClientReply.status).
    /// The body is not valid JSON or lacks a required field.
    public static let badRequest: UInt16 = 200
    /// `method` is not known to this coordinator.
    public static let unknownMethod: UInt16 = 201
    /// The job, shard, checkpoint or blob does not exist.
    public static let notFound: UInt16 = 202
    /// The submitted job spec is invalid; the body's "error" is `file:line: message`.
    public static let invalidSpec: UInt16 = 203
    /// The request conflicts with the current state (e.g. cancelling a finished job).
    public static let conflict: UInt16 = 204
    /// The answer would exceed the protocol limits; narrow the request.
    public static let tooLarge: UInt16 = 205

    // 500...599: server-side failures.
    /// Unexpected failure in the coordinator (e.g. a database error).
    public static let internalError: UInt16 = 500
    /// The coordinator is shutting down or its database is unavailable; retry later.
    public static let unavailable: UInt16 = 503
}

/// Maxima enforced by `WireCodec.decode` (SPEC.md §3). Senders must stay within them; receivers reject
/// anything larger with `ProtocolError.Code.oversize` before allocating for it.
public struct ProtocolLimits: Sendable, Hashable {
    /// Bytes in the header frame (exactly this many).
    public var headerBytes: Int
    /// UTF-8 bytes in one string field.
    public var maxStringBytes: Int
    /// Elements in one array field.
    public var maxArrayCount: Int
    /// Bytes in the body frame (all fields, including JSON byte fields).
    public var maxBodyBytes: Int
    /// Bytes in the blob frame.
    public var maxBlobBytes: Int
    /// Largest single ZeroMQ frame; a value for `ZMQ_MAXMSGSIZE` on sockets that speak this protocol.
    public var maxFrameBytes: Int { max(maxBodyBytes, maxBlobBytes, headerBytes) }
    /// The same as `maxFrameBytes`: libzmq applies ZMQ_MAXMSGSIZE to each frame, not to a whole message.
    public var maxMessageBytes: Int { maxFrameBytes }

    public static let v1 = ProtocolLimits(
        headerBytes: 8,
        maxStringBytes: 65_536,
        maxArrayCount: 65_536,
        maxBodyBytes: 16 << 20,
        maxBlobBytes: 64 << 20
    )

    public init(headerBytes: Int, maxStringBytes: Int, maxArrayCount: Int, maxBodyBytes: Int, maxBlobBytes: Int) {
        self.headerBytes = headerBytes
        self.maxStringBytes = maxStringBytes
        self.maxArrayCount = maxArrayCount
        self.maxBodyBytes = maxBodyBytes
        self.maxBlobBytes = maxBlobBytes
    }
}

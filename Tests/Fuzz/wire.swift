// libFuzzer target `wire` (ops/fuzz): the protocol v1 frame decoder (protocol/SPEC.md §4-§8) on arbitrary frames.
// Input: the golden-fixture container (protocol/fixtures/README.md), read leniently: u32 LE frame count (at most
// 8 used), then per frame a u32 LE length (cut to what is left) and its bytes. So the committed fixtures are seeds
// as they are, and any byte string is some set of frames.
//
// Properties: decoding never crashes or traps, whatever the bytes, bare or inside a ROUTER or DEALER envelope; and a
// decoded message re-encodes to frames that decode and encode to the same bytes again (the codec is a bijection on
// what it accepts).

import TesseraProtocol

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWire(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    let frames = frameSet(bytes)
    // As received: bare, behind a ROUTER's identity and delimiter, behind a DEALER's delimiter.
    var candidates = [frames]
    if let split = try? WireCodec.splitRouterEnvelope(frames) { candidates.append(split.frames) }
    if let inner = try? WireCodec.splitDealerEnvelope(frames) { candidates.append(inner) }
    for c in candidates { roundTrip(c) }
    return 0
}

func roundTrip(_ frames: [[UInt8]]) {
    _ = WireCodec.typeCodeIfPresent(frames)
    guard let message = try? WireCodec.decode(frames) else { return }
    let once = WireCodec.encode(message)
    let again: Message
    do {
        again = try WireCodec.decode(once)
    } catch {
        fatalError("a decoded \(message) re-encodes to frames the decoder refuses: \(error)")
    }
    let twice = WireCodec.encode(again)
    precondition(once == twice, "encode(decode(encode(m))) differs from encode(m) for \(message)")
}

func frameSet(_ bytes: [UInt8]) -> [[UInt8]] {
    var i = 0
    func u32() -> Int? {
        guard i + 4 <= bytes.count else { return nil }
        defer { i += 4 }
        return Int(bytes[i]) | Int(bytes[i + 1]) << 8 | Int(bytes[i + 2]) << 16 | Int(bytes[i + 3]) << 24
    }
    guard let count = u32() else { return [bytes] }
    var frames: [[UInt8]] = []
    for _ in 0..<min(count, 8) {
        guard let n = u32() else { break }
        let end = min(bytes.count, i + n)
        frames.append(Array(bytes[i..<end]))
        i = end
    }
    return frames
}

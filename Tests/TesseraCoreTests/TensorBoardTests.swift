// The TensorBoard event encoding against values derived by hand: CRC-32C's published check values, and an Event's
// protobuf bytes written out field by field. ops/interop/tensorboard_check.py reads real exports with TensorBoard.

import Testing
@testable import TesseraCore

struct TensorBoardTests {
    @Test func crc32cMatchesPublishedCheckValues() {
        // The CRC catalogue's check value for CRC-32C, and RFC 3720 (iSCSI) B.4's 32 zero bytes and 32 0xFF bytes.
        #expect(TensorBoard.crc32c(Array("123456789".utf8)) == 0xE306_9283)
        #expect(TensorBoard.crc32c([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(TensorBoard.crc32c([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        // The mask: rotate right by 15, add 0xa282ead8.
        let c: UInt32 = 0xE306_9283
        #expect(TensorBoard.maskedCRC32C(Array("123456789".utf8)) == ((c >> 15) | (c << 17)) &+ 0xA282_EAD8)
    }

    @Test func scalarEventBytesAreTheProtobufFieldsInOrder() {
        var file = TensorBoard.EventFile(wallTime: 1.0)
        let header = file.bytes
        file.addScalar(tag: "a", step: 3, value: 0.5)
        let record = Array(file.bytes[header.count...])
        // Event { wall_time(1, fixed64) = 1.0; step(2, varint) = 3; summary(5, len) = Summary { value(1, len) =
        //   Value { tag(1, len) = "a"; simple_value(2, fixed32) = 0.5f } } }
        let value: [UInt8] = [0x0A, 0x01, 0x61, 0x15, 0x00, 0x00, 0x00, 0x3F]
        let summary: [UInt8] = [0x0A, UInt8(value.count)] + value
        let event: [UInt8] = [0x09, 0, 0, 0, 0, 0, 0, 0xF0, 0x3F, 0x10, 0x03, 0x2A, UInt8(summary.count)] + summary
        #expect(record.count == 8 + 4 + event.count + 4)
        #expect(Array(record[0..<8]) == [UInt8(event.count), 0, 0, 0, 0, 0, 0, 0])  // length, little-endian
        #expect(Array(record[12..<(12 + event.count)]) == event)
        let crc = TensorBoard.maskedCRC32C(event)
        #expect(Array(record[(12 + event.count)...]) == (0..<4).map { UInt8(truncatingIfNeeded: crc >> (8 * $0)) })
        // The first record: wall_time and file_version "brain.Event:2".
        let version: [UInt8] = [0x09, 0, 0, 0, 0, 0, 0, 0xF0, 0x3F, 0x1A, 13] + Array("brain.Event:2".utf8)
        #expect(Array(header[12..<(12 + version.count)]) == version && header.count == 12 + version.count + 4)
    }

    @Test func negativeStepsAreTenByteVarints() {
        var w = ProtoWriter()
        w.int64(field: 2, -1)
        #expect(w.bytes == [0x10] + [UInt8](repeating: 0xFF, count: 9) + [0x01])
    }
}

import Foundation
import TesseraProtocol

/// SplitMix64: a tiny seeded generator so every property test is reproducible.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

enum Fixtures {
    /// protocol/fixtures, found relative to this file (Tests/TesseraProtocolTests/ -> ../../protocol/fixtures).
    static let directory: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("protocol/fixtures")

    /// Reads a `.frames` container: u32 LE frame count, then per frame u32 LE length + bytes (SPEC.md §10).
    static func load(_ relativePath: String) throws -> [[UInt8]] {
        let data = [UInt8](try Data(contentsOf: directory.appendingPathComponent(relativePath)))
        var index = 0
        func u32() throws -> Int {
            guard index + 4 <= data.count else { throw FixtureError.truncated(relativePath) }
            defer { index += 4 }
            return Int(data[index]) | Int(data[index + 1]) << 8 | Int(data[index + 2]) << 16 | Int(data[index + 3]) << 24
        }
        let count = try u32()
        var frames: [[UInt8]] = []
        for _ in 0..<count {
            let n = try u32()
            guard index + n <= data.count else { throw FixtureError.truncated(relativePath) }
            frames.append(Array(data[index..<index + n]))
            index += n
        }
        guard index == data.count else { throw FixtureError.trailing(relativePath) }
        return frames
    }

    /// Names (without extension) of the `.frames` files in a fixture directory.
    static func names(in subdirectory: String = "") throws -> Set<String> {
        let dir = subdirectory.isEmpty ? directory : directory.appendingPathComponent(subdirectory)
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path)
        return Set(files.filter { $0.hasSuffix(".frames") }.map { String($0.dropLast(".frames".count)) })
    }

    enum FixtureError: Error {
        case truncated(String)
        case trailing(String)
    }
}

extension Array where Element == UInt8 {
    init(hex: String) {
        var bytes: [UInt8] = []
        var it = hex.utf8.makeIterator()
        func nibble(_ c: UInt8) -> UInt8 { c <= 0x39 ? c - 0x30 : (c | 0x20) - 0x61 + 10 }
        while let hi = it.next(), let lo = it.next() { bytes.append(nibble(hi) << 4 | nibble(lo)) }
        self = bytes
    }
}

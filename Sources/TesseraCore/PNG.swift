// A PNG encoder with no library under it: 8-bit RGB, filter type 0 on every row, one zlib stream in IDAT compressed
// by our own deflate (LZ77 with one fixed-Huffman block, RFC 1951 §3.2.6), CRC-32 and Adler-32 computed here.
//
// Why fixed Huffman rather than stored blocks: a chart is mostly runs of one colour and rows repeating the row above,
// which LZ77 alone turns into a few bytes per run. A 720 x 360 chart is 778 KB stored and 15-30 KB this way (8 dense
// series of 10,000 points, about 90 KB), with no Huffman tables to build; dynamic Huffman would save perhaps another
// third at three times the code.
// Foundation on Linux has no zlib API and swift-crypto has no CRC-32, hence both checksums by hand.

/// An 8-bit RGB image, rows top to bottom, 3 bytes a pixel.
public struct RGBImage: Sendable {
    public let width: Int
    public let height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, fill: (r: UInt8, g: UInt8, b: UInt8) = (255, 255, 255)) {
        precondition(width > 0 && height > 0, "an image has at least one pixel")
        self.width = width
        self.height = height
        var p = [UInt8](repeating: 0, count: width * height * 3)
        for i in stride(from: 0, to: p.count, by: 3) { p[i] = fill.r; p[i + 1] = fill.g; p[i + 2] = fill.b }
        pixels = p
    }

    public subscript(x: Int, y: Int) -> (r: UInt8, g: UInt8, b: UInt8) {
        let i = (y * width + x) * 3
        return (pixels[i], pixels[i + 1], pixels[i + 2])
    }
}

public enum PNG {
    static let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]

    /// The image as a PNG file: signature, IHDR (8-bit truecolour, no interlace), one IDAT, IEND.
    public static func encode(_ image: RGBImage) -> [UInt8] {
        var raw = [UInt8]()
        raw.reserveCapacity((image.width * 3 + 1) * image.height)
        let stride = image.width * 3
        for y in 0..<image.height {
            raw.append(0)  // filter type 0: the row as it is
            raw.append(contentsOf: image.pixels[(y * stride)..<((y + 1) * stride)])
        }
        var ihdr = [UInt8]()
        ihdr += bigEndian(UInt32(image.width)) + bigEndian(UInt32(image.height))
        ihdr += [8, 2, 0, 0, 0]  // bit depth 8, colour type 2 (RGB), deflate, adaptive filtering, no interlace
        var out = signature
        out += chunk("IHDR", ihdr)
        out += chunk("IDAT", Zlib.compress(raw))
        out += chunk("IEND", [])
        return out
    }

    /// Length, type, data, and the CRC-32 of type and data.
    static func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
        let typeAndData = Array(type.utf8) + data
        return bigEndian(UInt32(data.count)) + typeAndData + bigEndian(CRC32.checksum(typeAndData))
    }

    static func bigEndian(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)] }
}

/// CRC-32 as PNG and zip use it (reflected, polynomial 0xEDB88320), a byte at a time from a 256-entry table.
public enum CRC32 {
    static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }
}

/// A zlib stream (RFC 1950): header, one deflate stream, Adler-32 of the uncompressed bytes.
public enum Zlib {
    public static func compress(_ data: [UInt8]) -> [UInt8] {
        // CMF 0x78: deflate, 32 KiB window. FLG 0x01: no dictionary, "fastest" level, and 0x7801 % 31 == 0.
        var out: [UInt8] = [0x78, 0x01]
        out += Deflate.compress(data)
        out += PNG.bigEndian(adler32(data))
        return out
    }

    public static func adler32(_ bytes: [UInt8]) -> UInt32 {
        var a: UInt32 = 1, b: UInt32 = 0
        // 5552 bytes is the most that can be summed before b might overflow 32 bits (zlib's NMAX).
        var i = 0
        while i < bytes.count {
            let end = min(i + 5552, bytes.count)
            while i < end { a += UInt32(bytes[i]); b += a; i += 1 }
            a %= 65521
            b %= 65521
        }
        return b << 16 | a
    }
}

/// Deflate (RFC 1951) as a single final block with the fixed Huffman codes. Matches are found by LZ77 over a 32 KiB
/// window: a hash of the next 3 bytes leads to the most recent positions with the same hash (a chain of up to
/// `maxChain`), and the longest match of 3 to 258 bytes wins; otherwise the byte is a literal.
enum Deflate {
    static let windowSize = 32768
    static let maxChain = 8
    static let minMatch = 3, maxMatch = 258

    // Length codes 257...285: the base length of each and its extra bits (RFC 1951 §3.2.5).
    static let lengthBase: [Int] = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258]
    static let lengthExtra: [Int] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]
    static let distBase: [Int] = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577]
    static let distExtra: [Int] = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13]

    /// Bits written least significant first, as deflate packs them.
    struct BitWriter {
        var bytes: [UInt8] = []
        var acc: UInt64 = 0
        var count = 0

        mutating func write(_ value: Int, bits: Int) {
            acc |= UInt64(value) << UInt64(count)
            count += bits
            while count >= 8 {
                bytes.append(UInt8(acc & 0xFF))
                acc >>= 8
                count -= 8
            }
        }

        /// A Huffman code: sent most significant bit first.
        mutating func writeCode(_ code: Int, bits: Int) {
            var reversed = 0
            for i in 0..<bits where code & (1 << i) != 0 { reversed |= 1 << (bits - 1 - i) }
            write(reversed, bits: bits)
        }

        mutating func finish() -> [UInt8] {
            if count > 0 { bytes.append(UInt8(acc & 0xFF)) }
            return bytes
        }
    }

    /// The fixed literal/length code of `symbol` (0...287), RFC 1951 §3.2.6.
    static func writeLiteralLength(_ symbol: Int, to w: inout BitWriter) {
        switch symbol {
        case 0...143: w.writeCode(0x30 + symbol, bits: 8)
        case 144...255: w.writeCode(0x190 + symbol - 144, bits: 9)
        case 256...279: w.writeCode(symbol - 256, bits: 7)
        default: w.writeCode(0xC0 + symbol - 280, bits: 8)
        }
    }

    static func writeMatch(length: Int, distance: Int, to w: inout BitWriter) {
        var l = lengthBase.count - 1
        while lengthBase[l] > length { l -= 1 }
        writeLiteralLength(257 + l, to: &w)
        if lengthExtra[l] > 0 { w.write(length - lengthBase[l], bits: lengthExtra[l]) }
        var d = distBase.count - 1
        while distBase[d] > distance { d -= 1 }
        w.writeCode(d, bits: 5)  // fixed distance codes: 5 bits each
        if distExtra[d] > 0 { w.write(distance - distBase[d], bits: distExtra[d]) }
    }

    static func compress(_ data: [UInt8]) -> [UInt8] {
        var w = BitWriter()
        w.bytes.reserveCapacity(data.count / 8 + 64)
        w.write(1, bits: 1)  // BFINAL
        w.write(1, bits: 2)  // BTYPE 01: fixed Huffman
        let n = data.count
        let hashBits = 15
        var head = [Int](repeating: -1, count: 1 << hashBits)
        var prev = [Int](repeating: -1, count: windowSize)
        data.withUnsafeBufferPointer { d in
            func hash(_ i: Int) -> Int {
                let v = Int(d[i]) << 16 | Int(d[i + 1]) << 8 | Int(d[i + 2])
                return (v &* 2_654_435_761) >> 17 & ((1 << hashBits) - 1)
            }
            func insert(_ i: Int) {
                guard i + minMatch <= n else { return }
                let h = hash(i)
                prev[i & (windowSize - 1)] = head[h]
                head[h] = i
            }
            var i = 0
            while i < n {
                var bestLength = 0, bestDistance = 0
                if i + minMatch <= n {
                    var candidate = head[hash(i)]
                    var chain = 0
                    let limit = min(maxMatch, n - i)
                    while candidate >= 0 && i - candidate <= windowSize - 1 && chain < maxChain {
                        var l = 0
                        while l < limit && d[candidate + l] == d[i + l] { l += 1 }
                        if l > bestLength {
                            bestLength = l
                            bestDistance = i - candidate
                            if l == limit { break }
                        }
                        candidate = prev[candidate & (windowSize - 1)]
                        chain += 1
                    }
                }
                if bestLength >= minMatch {
                    writeMatch(length: bestLength, distance: bestDistance, to: &w)
                    for j in i..<(i + bestLength) { insert(j) }
                    i += bestLength
                } else {
                    writeLiteralLength(Int(d[i]), to: &w)
                    insert(i)
                    i += 1
                }
            }
        }
        writeLiteralLength(256, to: &w)  // end of block
        return w.finish()
    }
}

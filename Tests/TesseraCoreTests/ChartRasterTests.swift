// The PNG chart: the file is read back here with code of its own (a bitwise CRC-32, an inflater for stored and
// fixed-Huffman deflate blocks, Adler-32 from its definition), and pixels are checked where the layout of
// ChartTests.swift puts things: 64 px left, 32 top, a 640 x 284 plot, y padded by 5%.

import Foundation
import TesseraCore
import Testing

@Suite("PNG charts (metrics --plot FILE.png)")
struct ChartRasterTests {
    static let blue: [UInt8] = [0x1f, 0x77, 0xb4], orange: [UInt8] = [0xff, 0x7f, 0x0e], white: [UInt8] = [255, 255, 255]

    @Test("The file is a valid PNG: signature, chunk CRCs, IHDR, an IDAT inflating to (3 * width + 1) * height bytes")
    func validFile() throws {
        let chart = LineChart(title: "t", series: [ChartSeries(label: "a", points: [(0, 0), (10, 10)])])
        let png = try DecodedPNG(chart.png())
        #expect(png.width == 720 && png.height == 360)
        #expect(png.chunkTypes == ["IHDR", "IDAT", "IEND"])
        // A chart is mostly runs: LZ77 brings 778 KB down to a small fraction.
        #expect(png.fileSize < 60_000)
        // Two series: the legend adds 16 px a row.
        let two = LineChart(title: "t", series: [ChartSeries(label: "a", points: [(0, 0)]), ChartSeries(label: "b", points: [(1, 1)])])
        #expect(try DecodedPNG(two.png()).height == 360 + 2 * 16)
        let empty = try DecodedPNG(LineChart(title: "nothing", series: []).png())
        #expect(empty.width == 720 && empty.height == 360)
    }

    @Test("The compressor round-trips what a chart is not: random bytes, long runs, short inputs")
    func deflateRoundTrip() throws {
        var state: UInt64 = 42
        func next() -> UInt8 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(state >> 56)
        }
        let inputs: [[UInt8]] = [
            [], [7], [1, 2], Array(repeating: 9, count: 100_000), (0..<70_000).map { _ in next() },
            (0..<50_000).map { UInt8($0 % 251) }, (0..<40_000).map { _ in next() & 3 },
        ]
        for input in inputs {
            let z = Zlib.compress(input)
            #expect(try Inflate.zlib(z) == input, "length \(input.count)")
        }
    }

    @Test("A line's pixels have its palette colour; away from lines, grid and text the plot is white")
    func linePixels() throws {
        let a = ChartSeries(label: "a", points: [(0, 0), (10, 10)])
        let b = ChartSeries(label: "b", points: [(0, 10), (10, 0)])
        let png = try DecodedPNG(LineChart(title: "t", series: [a, b]).png())
        // y range [-0.5, 10.5]: a runs from (64, 303.09) to (704, 44.91), b from (64, 44.91) to (704, 303.09).
        func ya(_ x: Double) -> Double { 303.0909 + (x - 64) / 640 * (44.9091 - 303.0909) }
        for x in stride(from: 100, through: 660, by: 40) where abs(x - 384) > 8 {
            // The pixel whose centre is on a's line vertically within half a pixel is fully covered.
            let cx = Double(x) + 0.5
            #expect(png.pixel(x, Int(ya(cx))) == Self.blue, "a at x=\(x)")
            #expect(png.pixel(x, Int(303.0909 + 44.9091 - ya(cx))) == Self.orange, "b at x=\(x)")
        }
        // Where the lines cross the later one (b) is on top.
        #expect(png.pixel(384, 174) == Self.orange)
        // Far from both lines (and not on a grid row: the ticks 0, 5, 10 are rows 303, 174, 44).
        for (x, y) in [(384, 60), (384, 290), (100, 180), (670, 180)] { #expect(png.pixel(x, y) == Self.white, "(\(x), \(y))") }
        // The grid row of tick 5 (y 174.0) is #e5e5e5 away from the lines; the frame is #555.
        #expect(png.pixel(150, 174) == [0xe5, 0xe5, 0xe5])
        #expect(png.pixel(64, 150) == [0x55, 0x55, 0x55] && png.pixel(300, 316) == [0x55, 0x55, 0x55])
        // Legend swatches (10 x 10 at x 64, y 347 and 363) in the series' colours.
        #expect(png.pixel(69, 351) == Self.blue && png.pixel(69, 367) == Self.orange)
    }

    @Test("The band is filled between lower and upper at 18% of blue over white; outside it stays white")
    func bandPixels() throws {
        let lo = ChartSeries(label: "0", points: [(0, 0), (10, 0)])
        let hi = ChartSeries(label: "1", points: [(0, 10), (10, 10)])
        let png = try DecodedPNG(LineChart.meanWithBand(title: "m", of: [lo, hi]).png())
        // Band from y 44.91 (10) to 303.09 (0); the mean, 5, at row 174.
        let tint = Self.blue.map { 255 * 0.82 + Double($0) * 0.18 }
        for (x, y) in [(300, 60), (300, 120), (500, 230), (650, 290)] {
            let p = png.pixel(x, y)
            #expect(zip(p, tint).allSatisfy { abs(Double($0) - $1) <= 1 }, "(\(x), \(y)): \(p)")
        }
        #expect(png.pixel(300, 174) == Self.blue)
        // Above the band (rows 33...43) and right of the plot: white.
        #expect(png.pixel(300, 38) == Self.white && png.pixel(300, 43) == Self.white && png.pixel(710, 150) == Self.white)
        // Row 45 is the first whose four sub-scanlines (45.125 ... 45.875) are all below the edge at 44.91.
        #expect(zip(png.pixel(300, 45), tint).allSatisfy { abs(Double($0) - $1) <= 1 })
    }

    @Test("A dense series (10,000 points on 640 px) keeps a one-point spike: its pixels are drawn in full")
    func denseSpike() throws {
        // Step 5007 lands at x 64 + 5007/9999 * 640 = 384.48; the spike to 10 reaches y 44.91, the rest is 0 (y 303.09).
        let points = (0..<10_000).map { (x: Double($0), y: $0 == 5007 ? 10.0 : 0) }
        let png = try DecodedPNG(LineChart(title: "t", series: [ChartSeries(label: "a", points: points)]).png())
        #expect((44...302).allSatisfy { png.pixel(384, $0) == Self.blue })
        #expect(png.pixel(384, 40) == Self.white && png.pixel(380, 150) == Self.white && png.pixel(389, 150) == Self.white)
        #expect(png.pixel(100, 303) == Self.blue && png.pixel(700, 303) == Self.blue)
    }

    @Test("Text renders: a bold T at the title position, tick labels under the axis")
    func text() throws {
        let png = try DecodedPNG(LineChart(title: "T", series: [ChartSeries(label: "a", points: [(0, 0), (10, 10)])]).png())
        // The title's baseline is y 18 at x 64: 7 glyph rows 11...17. A bold T: the bar 6 px wide, the stem 2.
        let black: [UInt8] = [0, 0, 0]
        for y in 10...18 {
            for x in 63...70 {
                let ink = (y == 11 && (64...69).contains(x)) || ((12...17).contains(y) && (66...67).contains(x))
                #expect(png.pixel(x, y) == (ink ? black : Self.white), "(\(x), \(y))")
            }
        }
        // The x tick "0" is centred on x 64 with its baseline at 316 + 16 = 332: ink in rows 325...331 only.
        let rows = (320...336).filter { y in (60...68).contains { png.pixel($0, y) == black } }
        #expect(rows == Array(325...331))
    }

    @Test("The PNG draws the SVG's layout: the same title, ticks and line positions")
    func sharedLayout() {
        let chart = LineChart(title: "t", series: [ChartSeries(label: "a", points: [(0, 0), (10, 10)])])
        let l = chart.layout()
        #expect(l.lines[0].runs[0].map { String(format: "%.1f,%.1f", $0.x, $0.y) } == ["64.0,303.1", "704.0,44.9"])
        #expect(l.yTicks.map(\.label.text) == ["0", "5", "10"])
        #expect(chart.raster().height == l.height)
    }
}

/// A PNG read back without the encoder's code: every chunk's CRC checked bitwise, the IDAT data inflated.
struct DecodedPNG {
    var width = 0, height = 0
    var chunkTypes: [String] = []
    var fileSize = 0
    /// Scanlines as stored: a filter byte, then 3 bytes a pixel.
    var raw: [UInt8] = []

    struct Invalid: Error, CustomStringConvertible { var description: String }

    init(_ bytes: [UInt8]) throws {
        fileSize = bytes.count
        guard bytes.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) else { throw Invalid(description: "no PNG signature") }
        func be32(_ i: Int) -> Int { Int(bytes[i]) << 24 | Int(bytes[i + 1]) << 16 | Int(bytes[i + 2]) << 8 | Int(bytes[i + 3]) }
        var i = 8, idat: [UInt8] = []
        while i < bytes.count {
            let length = be32(i)
            let typeAndData = Array(bytes[(i + 4)..<(i + 8 + length)])
            let type = String(decoding: typeAndData.prefix(4), as: UTF8.self)
            guard UInt32(be32(i + 8 + length)) == Self.bitwiseCRC32(typeAndData) else { throw Invalid(description: "bad CRC in \(type)") }
            chunkTypes.append(type)
            let data = Array(typeAndData.dropFirst(4))
            if type == "IHDR" {
                width = be32(i + 8)
                height = be32(i + 12)
                guard data[8...] == [8, 2, 0, 0, 0] else { throw Invalid(description: "not 8-bit RGB: \(data)") }
            }
            if type == "IDAT" { idat += data }
            i += 12 + length
        }
        raw = try Inflate.zlib(idat)
        guard raw.count == (width * 3 + 1) * height else { throw Invalid(description: "IDAT inflates to \(raw.count) bytes") }
        guard (0..<height).allSatisfy({ raw[$0 * (width * 3 + 1)] == 0 }) else { throw Invalid(description: "a row with a filter") }
    }

    func pixel(_ x: Int, _ y: Int) -> [UInt8] {
        let i = y * (width * 3 + 1) + 1 + x * 3
        return Array(raw[i..<(i + 3)])
    }

    /// CRC-32 a bit at a time, straight from the polynomial.
    static func bitwiseCRC32(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes {
            c ^= UInt32(b)
            for _ in 0..<8 { c = (c >> 1) ^ (c & 1 == 1 ? 0xEDB8_8320 : 0) }
        }
        return ~c
    }
}

/// Enough of RFC 1950/1951 to read what Zlib.compress writes: stored and fixed-Huffman blocks.
enum Inflate {
    struct Invalid: Error, CustomStringConvertible { var description: String }

    static func zlib(_ z: [UInt8]) throws -> [UInt8] {
        guard z.count >= 6, z[0] & 0x0F == 8, (Int(z[0]) << 8 | Int(z[1])) % 31 == 0 else { throw Invalid(description: "zlib header") }
        var bits = Bits(bytes: z, position: 16)
        var out: [UInt8] = []
        var final = false
        while !final {
            final = try bits.read(1) == 1
            switch try bits.read(2) {
            case 0:
                bits.position = (bits.position + 7) / 8 * 8
                let len = try bits.read(16), nlen = try bits.read(16)
                guard len ^ nlen == 0xFFFF else { throw Invalid(description: "stored length") }
                for _ in 0..<len { out.append(UInt8(try bits.read(8))) }
            case 1: try fixed(&bits, &out)
            default: throw Invalid(description: "block type")
            }
        }
        let end = (bits.position + 7) / 8
        guard end + 4 == z.count else { throw Invalid(description: "trailing bytes") }
        let adler = z[end...].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        // Adler-32 from its definition: A = 1 + sum of bytes, B = sum of the A's, both mod 65521.
        var a = 1, b = 0
        for v in out { a = (a + Int(v)) % 65521; b = (b + a) % 65521 }
        guard adler == UInt32(b << 16 | a) else { throw Invalid(description: "Adler-32") }
        return out
    }

    struct Bits {
        var bytes: [UInt8]
        var position: Int

        mutating func read(_ n: Int) throws -> Int {
            var v = 0
            for i in 0..<n {
                guard position / 8 < bytes.count else { throw Invalid(description: "out of data") }
                v |= Int(bytes[position / 8] >> (position % 8) & 1) << i
                position += 1
            }
            return v
        }

        /// A Huffman code, most significant bit first.
        mutating func code(_ n: Int) throws -> Int {
            var v = 0
            for _ in 0..<n { v = v << 1 | (try read(1)) }
            return v
        }
    }

    static func fixed(_ bits: inout Bits, _ out: inout [UInt8]) throws {
        let lengthBase = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258]
        let distBase = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577]
        while true {
            // 7-bit codes 0...23 are 256...279; 8-bit 48...191 are 0...143 and 192...199 are 280...287; 9-bit 400...511 are 144...255.
            var c = try bits.code(7), symbol: Int
            if c <= 23 {
                symbol = 256 + c
            } else {
                c = c << 1 | (try bits.read(1))
                if (48...191).contains(c) { symbol = c - 48 } else if (192...199).contains(c) { symbol = 280 + c - 192 } else {
                    c = c << 1 | (try bits.read(1))
                    symbol = 144 + c - 400
                }
            }
            if symbol < 256 { out.append(UInt8(symbol)); continue }
            if symbol == 256 { return }
            let l = symbol - 257
            let lengthExtra = l < 8 || l == 28 ? 0 : (l - 4) / 4
            let length = lengthBase[l] + (try bits.read(lengthExtra))
            let d = try bits.code(5)
            let distExtra = d < 4 ? 0 : (d - 2) / 2
            let distance = distBase[d] + (try bits.read(distExtra))
            guard distance <= out.count else { throw Invalid(description: "distance \(distance) before the start") }
            for _ in 0..<length { out.append(out[out.count - distance]) }
        }
    }
}

// Philox4x32-10, the counter-based generator of WORKLOADS.md §0 (Salmon et al., Random123).
//
// Every random number in Tessera is a pure function of (seed, index, step, stream): the key is the 64-bit job
// seed split into (lo, hi) words, the counter is (index_lo, index_hi, step, stream). A draw therefore does not
// depend on which worker, shard or thread produced it, which is what makes merged results shard-count invariant.
//
// Draws that need more than four 32-bit words per (index, step, stream) use `PhiloxStream`, which puts a word-group
// number in the counter's second word (index_hi). Such draws require index < 2^32; sample and pair indices are.

import Foundation

/// Stable stream ids (WORKLOADS.md §0). Never renumber: results depend on them.
public enum PhiloxStreamID: UInt32, Sendable {
    case initialNoise = 0  // x_T
    case stepNoise = 1  // per-step noise
    case dataDraw = 2  // draws from the data / target distribution
    case minibatch = 3
    case timestep = 4
    case action = 5
    case preferenceLabel = 6
    case evalProjections = 7
}

public enum Philox4x32 {
    @usableFromInline static let m0: UInt32 = 0xD251_1F53
    @usableFromInline static let m1: UInt32 = 0xCD9E_8D57
    @usableFromInline static let w0: UInt32 = 0x9E37_79B9
    @usableFromInline static let w1: UInt32 = 0xBB67_AE85

    /// The raw block function: 10 rounds of Philox4x32 on `counter` under `key`.
    @inlinable
    public static func block(
        counter: (UInt32, UInt32, UInt32, UInt32),
        key: (UInt32, UInt32)
    ) -> (UInt32, UInt32, UInt32, UInt32) {
        var c = counter
        var k = key
        for round in 0..<10 {
            if round > 0 {
                k.0 &+= w0
                k.1 &+= w1
            }
            let p0 = UInt64(m0) &* UInt64(c.0)
            let p1 = UInt64(m1) &* UInt64(c.2)
            let hi0 = UInt32(truncatingIfNeeded: p0 >> 32), lo0 = UInt32(truncatingIfNeeded: p0)
            let hi1 = UInt32(truncatingIfNeeded: p1 >> 32), lo1 = UInt32(truncatingIfNeeded: p1)
            c = (hi1 ^ c.1 ^ k.0, lo1, hi0 ^ c.3 ^ k.1, lo0)
        }
        return c
    }

    /// Four words for (seed, index, step, stream), with the counter layout of WORKLOADS.md §0.
    @inlinable
    public static func words(seed: UInt64, index: UInt64, step: UInt32, stream: UInt32) -> (UInt32, UInt32, UInt32, UInt32) {
        block(
            counter: (
                UInt32(truncatingIfNeeded: index), UInt32(truncatingIfNeeded: index >> 32), step, stream
            ),
            key: (UInt32(truncatingIfNeeded: seed), UInt32(truncatingIfNeeded: seed >> 32))
        )
    }

    /// u = ((x >> 8) + 0.5) * 2^-24: a uniform in (0, 1), never 0 or 1, so log(u) is finite.
    @inlinable
    public static func uniform(_ x: UInt32) -> Double {
        (Double(x >> 8) + 0.5) * 0x1p-24
    }

    /// Box-Muller on two words: two independent standard normals.
    @inlinable
    public static func boxMuller(_ a: UInt32, _ b: UInt32) -> (Double, Double) {
        let u1 = uniform(a)
        let u2 = uniform(b)
        let r = (-2.0 * log(u1)).squareRoot()
        let theta = 2.0 * Double.pi * u2
        return (r * cos(theta), r * sin(theta))
    }
}

/// Sequential words for one (seed, index, step, stream): word-group j is Philox(counter = (index, j, step, stream)).
/// Requires index < 2^32 (index_hi carries j).
public struct PhiloxStream: Sendable {
    public let seed: UInt64
    public let index: UInt32
    public let step: UInt32
    public let stream: UInt32
    @usableFromInline var group: UInt32 = 0
    @usableFromInline var buffer: (UInt32, UInt32, UInt32, UInt32) = (0, 0, 0, 0)
    @usableFromInline var used: Int = 4

    public init(seed: UInt64, index: UInt32, step: UInt32, stream: UInt32) {
        self.seed = seed
        self.index = index
        self.step = step
        self.stream = stream
    }

    public init(seed: UInt64, index: UInt32, step: UInt32, stream: PhiloxStreamID) {
        self.init(seed: seed, index: index, step: step, stream: stream.rawValue)
    }

    @inlinable
    public mutating func nextWord() -> UInt32 {
        if used == 4 {
            buffer = Philox4x32.block(
                counter: (index, group, step, stream),
                key: (UInt32(truncatingIfNeeded: seed), UInt32(truncatingIfNeeded: seed >> 32))
            )
            group &+= 1
            used = 0
        }
        defer { used += 1 }
        switch used {
        case 0: return buffer.0
        case 1: return buffer.1
        case 2: return buffer.2
        default: return buffer.3
        }
    }

    @inlinable
    public mutating func nextUniform() -> Double { Philox4x32.uniform(nextWord()) }

    /// Fills `out` with standard normals, two per Box-Muller pair (an odd count discards the pair's second value).
    @inlinable
    public mutating func fillNormals(_ out: UnsafeMutableBufferPointer<Double>) {
        var i = 0
        while i < out.count {
            let (z0, z1) = Philox4x32.boxMuller(nextWord(), nextWord())
            out[i] = z0
            if i + 1 < out.count { out[i + 1] = z1 }
            i += 2
        }
    }

    @inlinable
    public mutating func normals(_ count: Int) -> [Double] {
        var result = [Double](repeating: 0, count: count)
        result.withUnsafeMutableBufferPointer { fillNormals($0) }
        return result
    }
}

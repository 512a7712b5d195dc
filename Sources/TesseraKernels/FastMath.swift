// Vectorised Float kernels for the exp-heavy activations. The scalar libm `expf` costs ~5 ns a call, which at
// B=4096, H=512 would rival the gemm itself; this exp runs 16 lanes at a time and is deterministic (no libm, no
// table, same result on every x86-64 and arm64 machine, since it only uses IEEE add/mul/div and bit operations,
// and Swift never contracts a * b + c into an fma).
//
// Everything here is inlined into its caller (`@_transparent` for the vector functions: plain `@inline(__always)`
// still left `silu` as a call into this module's baseline build), so each module that calls it compiles its own copy
// for its own target: TesseraCompute for baseline x86-64 (or arm64), TesseraAVX512 for AVX-512. Elementwise, lane for lane, the
// two run the same IEEE operations in the same order, so they give the same bits (FastMathTests checks it).
//
// exp(x) = 2^n * p(r), n = round(x / ln 2), r = x - n ln 2 (two-constant Cody-Waite reduction), p a degree-6
// minimax polynomial (the classic Cephes expf coefficients). Max relative error ~2 ulp on [-87, 88].

public enum FastMath {
    public typealias V = SIMD16<Float>
    public typealias VI = SIMD16<Int32>
    public static let lanes = 16

    @_transparent
    public static func exp(_ x0: V) -> V {
        // Clamp with compare + select: `clamped`/`pointwiseMin` are not inlined and cost a call per vector.
        let lo = V(repeating: -87.0), hi = V(repeating: 88.0)
        var x = x0.replacing(with: hi, where: x0 .> hi)
        x.replace(with: lo, where: x .< lo)
        // Round to nearest with the 1.5 * 2^23 trick (no SSE4.1 `roundps` needed); the integer sits in the low bits.
        let magic = V(repeating: 12_582_912.0)
        let t = x * V(repeating: 1.442_695_040_888_963_4) + magic
        let n = t - magic
        let r = (x - n * V(repeating: 0.693_359_375)) - n * V(repeating: -2.121_944_400_546_905_827_68e-4)
        var p = V(repeating: 1.987_569_150_0e-4)
        p = p * r + V(repeating: 1.398_199_950_7e-3)
        p = p * r + V(repeating: 8.333_451_907_3e-3)
        p = p * r + V(repeating: 4.166_579_589_4e-2)
        p = p * r + V(repeating: 1.666_666_545_9e-1)
        p = p * r + V(repeating: 5.000_000_120_1e-1)
        p = p * (r * r) + r + V(repeating: 1)
        let ti: VI = unsafeBitCast(t, to: VI.self)
        let e = (ti &- VI(repeating: 0x4B40_0000) &+ VI(repeating: 127)) &<< VI(repeating: 23)
        return p * unsafeBitCast(e, to: V.self)
    }

    @_transparent
    public static func expScalar(_ x: Float) -> Float {
        exp(V(repeating: x))[0]
    }

    /// silu(z) = z * sigmoid(z) = z / (1 + exp(-z)).
    @_transparent
    public static func silu(_ z: V) -> V {
        z / (V(repeating: 1) + exp(-z))
    }

    @_transparent
    public static func siluDerivative(_ z: V) -> V {
        let s = V(repeating: 1) / (V(repeating: 1) + exp(-z))
        return s * (V(repeating: 1) + z * (V(repeating: 1) - s))
    }

    @_transparent
    public static func load(_ p: UnsafePointer<Float>) -> V {
        UnsafeRawPointer(p).loadUnaligned(as: V.self)
    }

    @_transparent
    public static func store(_ v: V, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self)
    }

    @inlinable @inline(__always)
    public static func biasSiLU(
        z: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
        rows: Int, cols: Int
    ) {
        let inPlace = z == out
        for r in 0..<rows {
            let zr = z + r * cols, orow = out + r * cols
            var c = 0
            while c + lanes <= cols {
                let v = load(zr + c) + load(bias + c)
                if !inPlace { store(v, zr + c) }
                store(silu(v), orow + c)
                c += lanes
            }
            while c < cols {
                let v = zr[c] + bias[c]
                zr[c] = v
                orow[c] = silu(V(repeating: v))[0]
                c += 1
            }
        }
    }

    @inlinable @inline(__always)
    public static func silu(x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i + lanes <= count {
            store(silu(load(x + i)), out + i)
            i += lanes
        }
        while i < count {
            out[i] = silu(V(repeating: x[i]))[0]
            i += 1
        }
    }

    @inlinable @inline(__always)
    public static func siluBackward(z: UnsafePointer<Float>, grad: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i + lanes <= count {
            store(load(grad + i) * siluDerivative(load(z + i)), grad + i)
            i += lanes
        }
        while i < count {
            grad[i] *= siluDerivative(V(repeating: z[i]))[0]
            i += 1
        }
    }
}

// `tessera-bench compute`: the MLP training-step benchmark of WORKLOADS.md §6 / issue 3.
//
// Model 34 -> H -> H -> H -> 2 with SiLU and MSE, float32, Adam; for every (B, H) it reports ms per training step
// (forward + backward + Adam), forward-only ms (inference pass), the GFLOP/s these reach, and the GFLOP/s of the raw
// gemm calls of the same forward pass (same shapes, no bias, no activation), both straight to cblas_sgemm (the
// issue's reference) and through `Float.gemm` (Tessera's own AVX-512 or AVX2 gemm where the CPU has it, Gemm.swift).
// It also measures the roofline: the peak Float FMA rate of a register-only fma loop (Tessera's widest build for this
// CPU) on 1 thread and on the thread count the gemms use, and gives each figure as a fraction of it.
//
// `ops/bench compute` runs three phases so that Tessera and PyTorch never share the CPU:
//   1. `tessera-bench compute --export DIR` writes DIR/mlp_B<b>_H<h>.safetensors (weights, x, y, Tessera's forward
//      output) for PyTorch to load;
//   2. ops/bench_torch.py times PyTorch on those files and writes a JSON summary;
//   3. `tessera-bench compute --torch-json FILE` times Tessera and prints the combined table.

import ArgumentParser
import Foundation
import TesseraCompute

struct ComputeBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compute",
        abstract: "MLP training step: Tessera vs PyTorch (34 -> H -> H -> H -> 2, SiLU, MSE, Adam)."
    )

    @Option(help: "Batch sizes, comma separated.") var batches: String = "256,1024,4096"
    @Option(help: "Hidden widths, comma separated.") var widths: String = "128,256,512"
    @Option(help: "OpenBLAS threads.") var threads: Int = 2
    @Option(help: "Float gemm: auto (Tessera's AVX-512, else AVX2 kernels), avx2 (Tessera's AVX2 kernels even on an AVX-512 CPU) or openblas (default: $TESSERA_GEMM or auto).")
    var gemm: String?
    @Option(help: "Force Tessera's gemm blocking, 'kc,mc' (tuning only: results do not depend on it).")
    var blocking: String?
    @Option(help: "Seconds of timing per measurement.") var seconds: Double = 2
    @Option(help: "Each figure is the best of this many rounds of seconds/rounds.") var rounds: Int = 5
    @Option(help: "Write model/data safetensors for PyTorch into this directory and exit.") var export: String?
    @Option(help: "PyTorch results (JSON from ops/bench_torch.py) to print alongside.") var torchJson: String?
    @Flag(help: "Also time each gemm of the training step alone (forward, dW, dX per layer shape), Tessera vs cblas.")
    var perGemm = false
    @Flag(help: "Time only Tessera's training step, nothing else (to run under a profiler).")
    var stepOnly = false

    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads must be >= 1") }
        guard seconds > 0, rounds >= 1 else { throw ValidationError("--seconds and --rounds must be positive") }
        _ = try gemmChoice()
        if let blocking, parse(blocking)?.count != 2 {
            throw ValidationError("--blocking takes 'kc,mc' (two positive integers)")
        }
        guard parse(batches) != nil, parse(widths) != nil else {
            throw ValidationError("--batches and --widths take comma-separated positive integers")
        }
    }

    func gemmChoice() throws -> GemmChoice {
        let value = gemm ?? ProcessInfo.processInfo.environment["TESSERA_GEMM"] ?? "auto"
        guard let choice = GemmChoice(rawValue: value.lowercased()) else {
            throw ValidationError("--gemm / TESSERA_GEMM must be auto, avx2 or openblas, not '\(value)'")
        }
        return choice
    }

    func parse(_ s: String) -> [Int]? {
        let v = s.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        return v.isEmpty || v.contains { $0 <= 0 } ? nil : v
    }

    func run() throws {
        BLASRuntime.configure(threads: threads, gemm: try gemmChoice())
        if let blocking, let v = parse(blocking) { GemmTuning.setBlocking(kc: v[0], mc: v[1]) }
        let bs = parse(batches)!, hs = parse(widths)!
        if let export {
            for h in hs {
                for b in bs { try BenchCase(batch: b, width: h).export(to: export) }
            }
            print("exported \(bs.count * hs.count) cases to \(export)")
            return
        }
        var torch: [String: TorchResult] = [:]
        var torchInfo = "PyTorch: not run"
        if let torchJson {
            let data = try Data(contentsOf: URL(fileURLWithPath: torchJson))
            let parsed = try JSONDecoder().decode(TorchReport.self, from: data)
            for r in parsed.results { torch["\(r.batch)x\(r.width)"] = r }
            torchInfo = "PyTorch \(parsed.torch_version), torch.get_num_threads() = \(parsed.threads), Adam(foreach=True)"
        }
        print("Tessera compute benchmark: MLP 34 -> H -> H -> H -> 2, SiLU, MSE, Adam, float32")
        print(
            "Tessera gemm backend: \(GemmBackend.current.rawValue); OpenBLAS \(BLASRuntime.coreName) (the raw cblas column), "
                + "threads = \(BLASRuntime.threads); \(torchInfo)")
        print("Tessera gemm blocking: \(GemmTuning.describe(GemmBackend.current))")
        print("timing: mean ms per call, best of \(rounds) rounds of \(seconds / Double(rounds)) s each, after warm-up")
        // The roofline: a register-only fma loop, on one thread and on as many as the gemms use (at most 2).
        // The loop is the backend's own ISA (the AVX2 backend against the AVX2 roofline), else the widest one.
        let gemmThreads = min(threads, 2)
        let current = GemmBackend.current
        let roofBackend: GemmBackend? = current.isTessera ? current : nil
        let peak1 = GemmTuning.fmaPeakGflops(threads: 1, backend: roofBackend)
        let peak = gemmThreads == 1 ? peak1 : GemmTuning.fmaPeakGflops(threads: gemmThreads, backend: roofBackend)
        let roofline = peak ?? .nan
        if let peak1, let peak {
            let isa = current == .avx2 || !GemmBackend.cpuHasAVX512 ? "AVX2" : "AVX-512"
            print(
                "roofline (register-only fma loop, \(isa) build): " + String(format: "%.1f", peak1)
                    + " GFLOP/s on 1 thread, " + String(format: "%.1f", peak) + " on \(gemmThreads) threads; "
                    + "% roof = figure / the \(gemmThreads)-thread roofline")
        } else {
            print("roofline: not measured (no AVX2/AVX-512 build for this CPU)")
        }
        print("")
        let header = [
            "B", "H", "Tessera ms/step", "PyTorch ms/step", "PyTorch 1-thr ms/step", "speed-up", "Tessera fwd ms",
            "PyTorch fwd ms", "step GFLOP/s", "fwd GFLOP/s", "raw cblas_sgemm GFLOP/s", "fwd/raw cblas",
            "raw Tessera gemm GFLOP/s", "fwd/raw Tessera", "step % roof", "fwd % roof", "raw Tessera % roof",
            "max|Δ fwd|",
        ]
        var rows: [[String]] = []
        for h in hs {
            for b in bs {
                var c = try BenchCase(batch: b, width: h)
                if stepOnly {
                    let step = try BenchCase.time(seconds: seconds, rounds: rounds) { try c.trainStep() }
                    print("B=\(b) H=\(h): \(fmt(step * 1e3)) ms/step")
                    continue
                }
                let m = try c.measure(seconds: seconds, rounds: rounds)
                let t = torch["\(b)x\(h)"]
                // Speed-up and PyTorch forward are against PyTorch's better thread setting (see ops/bench).
                let torchStep = t.map { min($0.step_ms, $0.step_ms_1t ?? .infinity) }
                let torchFwd = t.map { min($0.forward_ms, $0.forward_ms_1t ?? .infinity) }
                rows.append([
                    "\(b)", "\(h)", fmt(m.stepMs), t.map { fmt($0.step_ms) } ?? "-",
                    t.flatMap { $0.step_ms_1t.map(fmt) } ?? "-",
                    torchStep.map { String(format: "%.2fx", $0 / m.stepMs) } ?? "-",
                    fmt(m.forwardMs), torchFwd.map(fmt) ?? "-",
                    String(format: "%.1f", m.stepGflops), String(format: "%.1f", m.forwardGflops),
                    String(format: "%.1f", m.rawCblasGflops),
                    String(format: "%.0f%%", 100 * m.forwardGflops / m.rawCblasGflops),
                    String(format: "%.1f", m.rawGflops), String(format: "%.0f%%", 100 * m.forwardGflops / m.rawGflops),
                    pct(m.stepGflops, roofline), pct(m.forwardGflops, roofline), pct(m.rawGflops, roofline),
                    t.map { String(format: "%.1e", $0.max_abs_forward_diff) } ?? "-",
                ])
            }
        }
        printTable(header: header, rows: rows)
        if perGemm { try printPerGemm(bs: bs, hs: hs, roofline: roofline) }
    }

    /// The three gemm kinds of a training step at the hidden layer's shape, each timed alone.
    func printPerGemm(bs: [Int], hs: [Int], roofline: Double) throws {
        print("")
        print("Each gemm of a hidden layer alone (GFLOP/s; Tessera = `Float.gemm` as the MLP calls it, backend \(GemmBackend.current.rawValue)):")
        print("")
        var rows: [[String]] = []
        for h in hs {
            for b in bs {
                // (label, transA, transB, m, n, k): forward Z = X W^T, dW = G^T X, dX = G W.
                let kinds: [(String, Bool, Bool, Int, Int, Int)] = [
                    ("fwd X·Wᵀ", false, true, b, h, h), ("dW Gᵀ·X", true, false, h, h, b), ("dX G·W", false, false, b, h, h),
                    ("out fwd H→2", false, true, b, 2, h), ("out dW", true, false, 2, h, b), ("db Gᵀ·1", false, false, 1, h, b),
                ]
                for (label, tA, tB, m, n, k) in kinds {
                    let a = [Float](repeating: 0.25, count: m * k), bb = [Float](repeating: 0.5, count: k * n)
                    var c = [Float](repeating: 0, count: m * n)
                    let (lda, ldb) = (tA ? m : k, tB ? k : n)
                    let flops = 2 * Double(m * n * k)
                    func run(_ ours: Bool) -> Double {
                        BenchCase.time(seconds: seconds / 4, rounds: rounds) {
                            a.withUnsafeBufferPointer { ap in
                                bb.withUnsafeBufferPointer { bp in
                                    c.withUnsafeMutableBufferPointer { cp in
                                        BenchCase.sgemm(
                                            cblas: !ours, transA: tA, transB: tB, m: m, n: n, k: k, a: ap.baseAddress!,
                                            lda: lda, b: bp.baseAddress!, ldb: ldb, c: cp.baseAddress!, ldc: n)
                                    }
                                }
                            }
                        }
                    }
                    let ours = run(true)
                    let theirs = run(false)
                    Thread.sleep(forTimeInterval: 0.3)  // let OpenBLAS's spinning pool threads park (see measure)
                    rows.append([
                        "\(b)", "\(h)", label, "\(m)x\(n)x\(k)", String(format: "%.1f", flops / ours / 1e9),
                        String(format: "%.1f", flops / theirs / 1e9), String(format: "%.2fx", theirs / ours),
                        pct(flops / ours / 1e9, roofline),
                    ])
                }
            }
        }
        printTable(
            header: ["B", "H", "gemm", "m x n x k", "Tessera GFLOP/s", "cblas GFLOP/s", "Tessera/cblas", "Tessera % roof"],
            rows: rows)
    }

    /// GFLOP/s as a percentage of the measured roofline.
    func pct(_ gflops: Double, _ roofline: Double) -> String {
        roofline.isNaN ? "-" : String(format: "%.0f%%", 100 * gflops / roofline)
    }

    func fmt(_ ms: Double) -> String { ms < 10 ? String(format: "%.3f", ms) : String(format: "%.2f", ms) }

    func printTable(header: [String], rows: [[String]]) {
        print("| " + header.joined(separator: " | ") + " |")
        print("|" + header.map { _ in "---:|" }.joined())
        for r in rows { print("| " + r.joined(separator: " | ") + " |") }
    }
}

struct TorchResult: Decodable {
    var batch: Int
    var width: Int
    var step_ms: Double
    var forward_ms: Double
    var step_ms_1t: Double?
    var forward_ms_1t: Double?
    var max_abs_forward_diff: Double
}

struct TorchReport: Decodable {
    var torch_version: String
    var threads: Int
    var results: [TorchResult]
}

struct Measurement {
    var stepMs: Double
    var forwardMs: Double
    var stepGflops: Double
    var forwardGflops: Double
    /// The forward pass's gemms through `Float.gemm` (Tessera's backend).
    var rawGflops: Double
    /// The same gemms through cblas_sgemm.
    var rawCblasGflops: Double
}

/// One (B, H) configuration with its model, data, workspace and optimizer, all allocated up front.
struct BenchCase {
    let batch: Int
    let width: Int
    var model: MLP<Float>
    var optimizer: Adam<Float>
    var workspace: MLPWorkspace<Float>
    let x: Tensor<Float>
    let y: Tensor<Float>
    var grad: Tensor<Float>

    init(batch: Int, width: Int) throws {
        self.batch = batch
        self.width = width
        model = try MLP(sizes: [34, width, width, width, 2], activation: .silu, seed: 1234)
        optimizer = try Adam(configuration: .adam(learningRate: 1e-3), parameterCount: model.parameterCount)
        workspace = model.makeWorkspace(batchCapacity: batch)
        var xs = [Float](), ys = [Float]()
        for i in 0..<batch {
            var s = PhiloxStream(seed: 99, index: UInt32(i), step: 0, stream: .dataDraw)
            xs += s.normals(34).map { Float($0) }
            ys += s.normals(2).map { Float($0) }
        }
        x = try Tensor(shape: [batch, 34], scalars: xs)
        y = try Tensor(shape: [batch, 2], scalars: ys)
        grad = Tensor(shape: [batch, 2])
    }

    /// Forward flops (2 m n k per layer) and training-step flops (forward + two gemm per layer, minus dX of layer 0).
    var forwardFlops: Double {
        let s = model.sizes
        return (0..<(s.count - 1)).reduce(0.0) { $0 + 2 * Double(batch * s[$1] * s[$1 + 1]) }
    }

    var stepFlops: Double { 3 * forwardFlops - 2 * Double(batch * 34 * width) }

    mutating func trainStep() throws {
        try model.forward(x, workspace: &workspace)
        _ = workspace.withOutput { out in
            y.scalars.withUnsafeBufferPointer { t in
                grad.scalars.withUnsafeMutableBufferPointer { g in Loss.mse(prediction: out, target: t, gradient: g) }
            }
        }
        try model.backward(grad, workspace: &workspace)
        optimizer.update(&model)
    }

    mutating func forwardOnly() throws {
        try model.forward(x, workspace: &workspace, training: false)
    }

    /// C = op(A) op(B) straight to cblas_sgemm, or through `Float.gemm` (Tessera's backend).
    static func sgemm(
        cblas: Bool, transA: Bool, transB: Bool, m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        let gemm = cblas ? OpenBLAS.sgemm : Float.gemm
        gemm(transA, transB, m, n, k, 1, a, lda, b, ldb, 0, c, ldc)
    }

    /// The sgemm calls of one forward pass, nothing else, on buffers of the same shapes: through `Float.gemm`
    /// (Tessera's backend) or straight to cblas_sgemm.
    static func rawForward(batch: Int, sizes: [Int], bufs: inout [[Float]], weights: [[Float]], cblas: Bool) {
        for l in 0..<(sizes.count - 1) {
            let (k, n) = (sizes[l], sizes[l + 1])
            let src = bufs[l]
            src.withUnsafeBufferPointer { a in
                weights[l].withUnsafeBufferPointer { w in
                    bufs[l + 1].withUnsafeMutableBufferPointer { c in
                        sgemm(
                            cblas: cblas, transA: false, transB: true, m: batch, n: n, k: k, a: a.baseAddress!,
                            lda: k, b: w.baseAddress!, ldb: k, c: c.baseAddress!, ldc: n)
                    }
                }
            }
        }
    }

    /// Mean seconds per call of `body`, best of `rounds` rounds (the minimum filters out other processes' bursts).
    static func time(seconds: Double, rounds: Int, _ body: () throws -> Void) rethrows -> Double {
        for _ in 0..<3 { try body() }
        var best = Double.infinity
        for _ in 0..<rounds {
            let budget = seconds / Double(rounds)
            var n = 0
            let start = DispatchTime.now().uptimeNanoseconds
            var elapsed = 0.0
            repeat {
                try body()
                n += 1
                elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            } while elapsed < budget || n < 3
            best = min(best, elapsed / Double(n))
        }
        return best
    }

    mutating func measure(seconds: Double, rounds: Int) throws -> Measurement {
        let step = try Self.time(seconds: seconds, rounds: rounds) { try trainStep() }
        let fwd = try Self.time(seconds: seconds, rounds: rounds) { try forwardOnly() }
        let sizes = model.sizes
        var bufs = sizes.map { [Float](repeating: 0.5, count: batch * $0) }
        let weights = (0..<(sizes.count - 1)).map { model.weight($0).scalars }
        let b = batch
        let raw = Self.time(seconds: seconds, rounds: rounds) {
            Self.rawForward(batch: b, sizes: sizes, bufs: &bufs, weights: weights, cblas: false)
        }
        let rawCblas = Self.time(seconds: seconds, rounds: rounds) {
            Self.rawForward(batch: b, sizes: sizes, bufs: &bufs, weights: weights, cblas: true)
        }
        // OpenBLAS's pool threads spin (sched_yield) for a while after the last cblas call (2^28 cycles by default,
        // ~0.1 s): let them park before the next case times Tessera, which uses no OpenBLAS at all.
        Thread.sleep(forTimeInterval: 0.3)
        return Measurement(
            stepMs: step * 1e3, forwardMs: fwd * 1e3, stepGflops: stepFlops / step / 1e9,
            forwardGflops: forwardFlops / fwd / 1e9, rawGflops: forwardFlops / raw / 1e9,
            rawCblasGflops: forwardFlops / rawCblas / 1e9)
    }

    /// Weights (state-dict names), inputs, targets and Tessera's forward output, for the PyTorch side.
    func export(to dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var tensors: [SafeTensor] = []
        for (name, range, shape) in model.namedParameters {
            tensors.append(try SafeTensor(name: name, float32: Array(model.parameters[range]), shape: shape))
        }
        let out = try model.predict(x)
        tensors.append(try SafeTensor(name: "x", float32: x.scalars, shape: x.shape))
        tensors.append(try SafeTensor(name: "y", float32: y.scalars, shape: y.shape))
        tensors.append(try SafeTensor(name: "tessera_forward", float32: out.scalars, shape: out.shape))
        let meta = ["batch": "\(batch)", "width": "\(width)", "sizes": model.sizes.map(String.init).joined(separator: ",")]
        try SafeTensorsFile(tensors: tensors, metadata: meta).write(toPath: "\(dir)/mlp_B\(batch)_H\(width).safetensors")
    }
}

// WORKLOADS.md §1 S2: `ddpm-train`. The independent check is Pythagoras: eps* = E[e | x_t], so for ANY predictor
// f, E|e - f|^2 - E|e - eps*|^2 = E|f - eps*|^2 (the excess). The test rebuilds the evaluation set from the
// documented Philox recipe and computes eps* from the mixture formula written here, then checks the identity to
// Monte-Carlo error — which fails for a predictor that is not the conditional mean (checked too). Also: the
// documented excess is what `evaluate()` reports, training drives it down, checkpoints have the §7 layout, and a
// resumed run ends bitwise where an uninterrupted one does.

import Foundation
import TesseraCompute
import TesseraCore
import TesseraWorkloads
import Testing

/// eps*(x, a) of an isotropic mixture, from WORKLOADS §0, written independently of GaussianMixture.
private func referenceEps(_ x: [Double], a: Double, w: [Double], mu: [[Double]], s: [Double]) -> [Double] {
    let d = x.count
    let v = s.map { a * $0 * $0 + 1 - a }
    let logits = (0..<w.count).map { k -> Double in
        var dist = 0.0
        for c in 0..<d { dist += pow(x[c] - a.squareRoot() * mu[k][c], 2) }
        return log(w[k]) - Double(d) / 2 * log(v[k]) - dist / (2 * v[k])
    }
    let top = logits.max()!
    let g = logits.map { exp($0 - top) }
    let z = g.reduce(0, +)
    return (0..<d).map { c in
        (1 - a).squareRoot() * (0..<w.count).reduce(0.0) { $0 + g[$1] / z * (x[c] - a.squareRoot() * mu[$1][c]) / v[$1] }
    }
}

@Suite("ddpm-train: denoising score matching (S2)")
struct DenoiserTrainingTests {
    static let w = [0.4, 0.3, 0.2, 0.1]
    static let mu: [[Double]] = [[2, 0], [0, 2], [-2, 0], [0, -2]]
    static let s = [0.5, 0.5, 0.5, 0.5]

    static func smallConfig(steps: Int, evalSamples: Int, hidden: [Int] = [32, 32]) throws -> DenoiserTrainingConfig {
        try DenoiserTrainingConfig(
            target: GaussianMixture(weights: w, means: mu, stds: s), schedule: SamplingFixtures.schedule(),
            hidden: hidden, steps: steps, batch: 128, learningRate: 5e-3, minLearningRate: 1e-5,
            evalSamples: evalSamples, seed: 3)
    }

    @Test("Pythagoras: E|e - f|^2 - E|e - eps*|^2 = excess, to MC error; the reported excess is the documented one")
    func pythagoras() throws {
        let config = try Self.smallConfig(steps: 30, evalSamples: 20_000)
        let trainer = try DenoiserTrainer(config: config)
        for _ in 0..<30 { trainer.trainStep() }
        let model = try trainer.noiseModel()
        let alphaBar = config.schedule.alphaBar
        // The evaluation set, by the documented recipe: sample j at Philox step 0: x0 = component by inverse CDF on
        // stream 2 word 0, then mu_k + s_k z; t = floor(u T) from stream 4; e from stream 1.
        let count = config.evalSamples
        var xs: [[Double]] = [], es: [[Double]] = [], exacts: [[Double]] = [], wrongs: [[Double]] = []
        var ts: [Int] = []
        for j in 0..<count {
            var data = PhiloxStream(seed: 3, index: UInt32(j), step: 0, stream: .dataDraw)
            let u = data.nextUniform()
            var k = 0, cum = 0.0
            while k < Self.w.count - 1 {
                cum += Self.w[k]
                if u < cum { break }
                k += 1
            }
            let z = data.normals(2)
            let x0 = [Self.mu[k][0] + 0.5 * z[0], Self.mu[k][1] + 0.5 * z[1]]
            var time = PhiloxStream(seed: 3, index: UInt32(j), step: 0, stream: .timestep)
            let t = Int(time.nextUniform() * 1000)
            var noise = PhiloxStream(seed: 3, index: UInt32(j), step: 0, stream: .stepNoise)
            let e = noise.normals(2)
            let a = alphaBar[t]
            let x = [a.squareRoot() * x0[0] + (1 - a).squareRoot() * e[0], a.squareRoot() * x0[1] + (1 - a).squareRoot() * e[1]]
            xs.append(x)
            es.append(e)
            ts.append(t)
            exacts.append(referenceEps(x, a: a, w: Self.w, mu: Self.mu, s: Self.s))
            // A plausible but wrong "exact" predictor: the eps* of the schedule 100 steps later.
            wrongs.append(referenceEps(x, a: alphaBar[min(999, t + 100)], w: Self.w, mu: Self.mu, s: Self.s))
        }
        // f, the network's prediction, asked for in the batches the evaluation uses (each run of consecutive equal
        // timesteps in one call): through cblas (the portable kernels) a row's float32 result may depend on how many
        // rows the gemm has — one ulp of f moves the summed excess by ~1e-11 relative — while the identities below
        // are checked in double. Data, eps* and every sum are recomputed here.
        var fs = [[Double]](repeating: [0, 0], count: count)
        var start = 0
        while start < count {
            var end = start + 1
            while end < count && ts[end] == ts[start] { end += 1 }
            let flatX = xs[start..<end].flatMap { $0 }
            var flatF = [Double](repeating: 0, count: flatX.count)
            flatX.withUnsafeBufferPointer { xp in
                flatF.withUnsafeMutableBufferPointer {
                    model.predictNoise(xp.baseAddress!, count: end - start, t: ts[start], into: $0.baseAddress!)
                }
            }
            for j in start..<end { fs[j] = [flatF[2 * (j - start)], flatF[2 * (j - start) + 1]] }
            start = end
        }
        var excess = 0.0, lossModel = 0.0, lossExact = 0.0, lossWrong = 0.0
        var cross: [Double] = [], crossWrong: [Double] = []
        for j in 0..<count {
            let (f, e, exact, wrong) = (fs[j], es[j], exacts[j], wrongs[j])
            var ex = 0.0, lm = 0.0, le = 0.0, lw = 0.0, c = 0.0, cw = 0.0
            for i in 0..<2 {
                ex += (f[i] - exact[i]) * (f[i] - exact[i])
                lm += (e[i] - f[i]) * (e[i] - f[i])
                le += (e[i] - exact[i]) * (e[i] - exact[i])
                lw += (e[i] - wrong[i]) * (e[i] - wrong[i])
                c += 2 * (f[i] - exact[i]) * (exact[i] - e[i])
                cw += 2 * (f[i] - wrong[i]) * (wrong[i] - e[i])
            }
            excess += ex
            lossModel += lm
            lossExact += le
            lossWrong += lw
            cross.append(c)
            crossWrong.append(cw)
        }
        let n = Double(config.evalSamples)
        let report = trainer.evaluate()
        #expect(abs(report.excess - excess / n) <= 1e-12 * excess / n, "reported \(report.excess), recomputed \(excess / n)")
        #expect(abs(report.evalLoss - lossModel / n) <= 1e-12 * lossModel / n)
        #expect(abs(report.evalLossExact - lossExact / n) <= 1e-12 * lossExact / n)
        #expect(report.bucketCounts.reduce(0, +) == config.evalSamples)

        func meanAndError(_ xs: [Double]) -> (Double, Double) {
            let m = xs.reduce(0, +) / Double(xs.count)
            let v = xs.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(xs.count - 1)
            return (m, (v / Double(xs.count)).squareRoot())
        }
        // loss(f) - loss(eps*) - excess is the cross term 2 <f - eps*, eps* - e>, mean zero iff eps* = E[e | x].
        let (m, se) = meanAndError(cross)
        #expect(abs((lossModel - lossExact - excess) / n - m) < 1e-9)
        #expect(abs(m) < 5 * se, "cross term \(m) +- \(se)")
        // The same identity with a wrong predictor in the place of eps* is far outside MC error.
        let (mw, sew) = meanAndError(crossWrong)
        #expect(abs(mw) > 10 * sew, "wrong predictor's cross term \(mw) +- \(sew) should be significant")
        #expect(lossExact < lossModel && lossExact < lossWrong)
    }

    @Test("Checkpoints: PyTorch names, Adam state, schedule betas F64, target, RNG position; the sampler loads them")
    func checkpointLayout() throws {
        let config = try Self.smallConfig(steps: 5, evalSamples: 16)
        let trainer = try DenoiserTrainer(config: config, configText: "{\"x\":1}")
        for _ in 0..<5 { trainer.trainStep() }
        let bytes = try trainer.checkpoint()
        let file = try SafeTensorsFile.parse(bytes)
        #expect(file["layers.0.weight"]?.shape == [32, 34] && file["layers.0.weight"]?.dtype == .F32)
        #expect(file["layers.2.weight"]?.shape == [2, 32] && file["layers.2.bias"]?.shape == [2])
        #expect(file["optim.layers.1.weight.exp_avg"]?.shape == [32, 32])
        #expect(file["optim.layers.1.weight.exp_avg_sq"]?.shape == [32, 32])
        #expect(try file["optim.step"]?.int64Values() == [5])
        #expect(try file["schedule.betas"]?.float64Values() == config.schedule.betas)
        #expect(file["schedule.betas"]?.dtype == .F64)
        #expect(try file["target.weights"]?.float64Values() == config.target.weights)  // normalised w
        #expect(zip(config.target.weights, Self.w).allSatisfy { abs($0 - $1) < 1e-15 })
        #expect(try file["target.means"]?.float64Values() == Self.mu.flatMap { $0 })
        #expect(try file["target.stds"]?.float64Values() == Self.s)
        #expect(file.metadata["format"] == "worker-ckpt/1" && file.metadata["algo"] == "ddpm-train")
        #expect(file.metadata["rng_counter"] == "5" && file.metadata["step"] == "5")
        #expect(file.metadata["config"] == "{\"x\":1}" && file.metadata["time_embedding"] == "32")

        // The sampler rebuilds exactly the trained function.
        let loaded = try NetworkNoiseModel.load(checkpoint: bytes, target: config.target, schedule: config.schedule)
        let direct = try trainer.noiseModel()
        let x: [Double] = [0.3, -1.2, 2.0, 0.1]
        var a = [Double](repeating: 0, count: 4), b = a
        x.withUnsafeBufferPointer { xp in
            a.withUnsafeMutableBufferPointer { loaded.predictNoise(xp.baseAddress!, count: 2, t: 640, into: $0.baseAddress!) }
            b.withUnsafeMutableBufferPointer { direct.predictNoise(xp.baseAddress!, count: 2, t: 640, into: $0.baseAddress!) }
        }
        #expect(a == b)
        // ... and refuses a checkpoint trained on another target or schedule.
        let other = try GaussianMixture(weights: [0.25, 0.25, 0.25, 0.25], means: Self.mu, stds: Self.s)
        #expect(throws: ShardError.self) { try NetworkNoiseModel.load(checkpoint: bytes, target: other, schedule: config.schedule) }
        let schedule = try BetaSchedule.linear(betaStart: 0.0001, betaEnd: 0.03, steps: 1000)
        #expect(throws: ShardError.self) { try NetworkNoiseModel.load(checkpoint: bytes, target: config.target, schedule: schedule) }
        // A resume with another configuration is refused rather than silently mixing runs.
        #expect(throws: ShardError.self) { try DenoiserTrainer(config: config, configText: "{}", checkpoint: bytes) }
    }

    @Test("A shard resumed from its step-20 checkpoint ends bitwise where the uninterrupted run ends")
    func resumeIsBitwise() throws {
        let spec = try LearnedFixtures.trainSpec(
            steps: 30, batch: 64, hidden: "[16, 16]", lr: 5e-3, lrMin: 1e-5, evalSamples: 256, evalEvery: 10,
            logEvery: 5, checkpointEvery: 10)
        let algorithm = DenoiserTraining()
        let slice = try algorithm.plan(spec)[0]
        func task(_ resume: (Int64, [UInt8])?) -> ShardTask {
            ShardTask(spec: spec, shardIndex: 0, attempt: 1, slice: slice.slice, totalSteps: slice.totalSteps, resume: resume)
        }
        let whole = MemorySink()
        let full = try algorithm.run(task(nil), sink: whole)
        #expect(whole.checkpoints.map(\.step) == [10, 20, 30])
        #expect(whole.lastProgress == 30)

        let first = MemorySink()
        first.stopAfterCheckpoint = 20
        #expect(throws: ShardStopped.self) { try algorithm.run(task(nil), sink: first) }
        let saved = try #require(first.checkpoints.last)
        #expect(saved.step == 20)
        #expect(saved.bytes == whole.checkpoints[1].bytes)

        let second = MemorySink()
        let resumed = try algorithm.run(task((saved.step, saved.bytes)), sink: second)
        #expect(second.checkpoints.map(\.step) == [30])
        #expect(second.checkpoints.last?.bytes == whole.checkpoints.last?.bytes, "final checkpoint differs after resume")
        #expect(resumed == full)
        for (key, value) in second.metrics {
            #expect(whole.metrics[key]?.bitPattern == value.bitPattern, "metric \(key)")
        }
        #expect(second.metrics["loss@30"] != nil && second.metrics["excess@30"] != nil)
        #expect(second.metrics["excess_bucket_9@30"] != nil && second.metrics["lr@25"] != nil)
        // Merged result: the summary plus the network and target echo.
        let result = try algorithm.merge(spec, outputs: [full])
        #expect(result["steps"]?.intValue == 30)
        #expect(result["network"]?["sizes"] == .array([.int(34), .int(16), .int(16), .int(2)]))
        #expect(result["excess_buckets"]?.arrayValue?.count == 10)
    }

    @Test("Spec checks: one shard; model.from_job must be in depends_on; unknown keys; all with lines")
    func specChecks() throws {
        let two = try JobSpec.parse(
            "name: t\nkind: sampling\nalgorithm: ddpm-train\nseed: 1\nshards: 2\nparams:\n  target: {means: [[0]], stds: [1]}\n",
            file: "t.yaml")
        #expect(throws: SpecError.self) { try Workloads.catalogue.validate(two) }
        do {
            _ = try Workloads.catalogue.validate(two)
        } catch let e as SpecError {
            #expect(e.description.hasPrefix("t.yaml:5: ddpm-train runs as one training shard"), "\(e)")
        }
        let missingDep = """
            name: s
            kind: sampling
            algorithm: ddim
            seed: 1
            depends_on: [4]
            params:
              target: {means: [[0]], stds: [1]}
              samples: 10
              model:
                from_job: 5
            """
        do {
            _ = try Workloads.catalogue.validate(JobSpec.parse(missingDep, file: "s.yaml"))
            Issue.record("from_job outside depends_on was accepted")
        } catch let e as SpecError {
            #expect(e.description.hasPrefix("s.yaml:10: params.model.from_job is job 5, which is not in depends_on"), "\(e)")
        }
        let ok = missingDep.replacingOccurrences(of: "from_job: 5", with: "from_job: 4")
        #expect(try Workloads.catalogue.validate(JobSpec.parse(ok, file: "s.yaml")).1.count == 1)
        let unknown = ok.replacingOccurrences(of: "from_job: 4", with: "from_job: 4\n    checkpoint: 3")
        #expect(throws: SpecError.self) { try Workloads.catalogue.validate(JobSpec.parse(unknown, file: "s.yaml")) }
        let badTrain = try JobSpec.parse(
            "name: t\nkind: sampling\nalgorithm: ddpm-train\nseed: 1\nparams:\n  target: {means: [[0]], stds: [1]}\n  lr: 0.001\n  lr_min: 0.01\n",
            file: "t.yaml")
        do {
            _ = try Workloads.catalogue.validate(badTrain)
            Issue.record("lr_min > lr was accepted")
        } catch let e as SpecError {
            #expect(e.description.hasPrefix("t.yaml:8: params.lr_min"), "\(e)")
        }
    }
}

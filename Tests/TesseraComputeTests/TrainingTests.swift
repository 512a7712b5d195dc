import Testing
import TesseraCompute

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A small DSM-like regression: inputs and targets are pure functions of (seed, sample, step) through Philox.
struct ToyTrainer {
    static let batch = 32
    static let sizes = [6, 16, 16, 2]
    let seed: UInt64 = 0xC0FFEE

    func batchData(step: Int) -> (x: [Float], y: [Float]) {
        var x = [Float](), y = [Float]()
        for i in 0..<Self.batch {
            var s = PhiloxStream(seed: seed, index: UInt32(i), step: UInt32(step), stream: .minibatch)
            let v = s.normals(6).map { Float($0) }
            x += v
            y += [v[0] * v[1] - v[2], Float(sin(Double(v[3]))) + 0.5 * v[4]]
        }
        return (x, y)
    }

    /// Runs steps [from, to) on `ckpt` in place: forward, MSE, backward, clip, AdamW with warm-up + cosine.
    func train(_ ckpt: inout TrainingCheckpoint<Float>, to end: Int) throws {
        var ws = ckpt.model.makeWorkspace(batchCapacity: Self.batch)
        var grad = [Float](repeating: 0, count: Self.batch * 2)
        while ckpt.step < end {
            let (x, y) = batchData(step: ckpt.step)
            try ckpt.model.forward(Tensor(shape: [Self.batch, 6], scalars: x), workspace: &ws)
            let loss = ws.withOutput { out in
                y.withUnsafeBufferPointer { t in
                    grad.withUnsafeMutableBufferPointer { g in Loss.mse(prediction: out, target: t, gradient: g) }
                }
            }
            try ckpt.model.backward(Tensor(shape: [Self.batch, 2], scalars: grad), workspace: &ws)
            ckpt.model.clipGradientNorm(maxNorm: 1.0)
            ckpt.optimizer.update(&ckpt.model)
            ckpt.step += 1
            ckpt.rngCounter = UInt64(ckpt.step)
            ckpt.metricsLast = "{\"loss\":\(loss)}"
        }
    }

    func fresh() throws -> TrainingCheckpoint<Float> {
        let model = try MLP<Float>(sizes: Self.sizes, activation: .silu, seed: seed)
        let opt = try Adam<Float>(
            configuration: .adamW(
                learningRate: 3e-3, weightDecay: 0.01,
                schedule: .cosine(warmupSteps: 5, totalSteps: 40, minFactor: 0.1)),
            parameterCount: model.parameterCount)
        return TrainingCheckpoint(
            model: model, optimizer: opt, seed: seed, rngCounter: 0, step: 0, algo: "toy_dsm",
            config: "{\"width\":16}",
            extraTensors: [try SafeTensor(name: "schedule.betas", float64: [1e-4, 0.02], shape: [2])],
            extraMetadata: ["ref_sha256": "00"])
    }
}

@Suite struct TrainingTests {
    @Test func stopAndResumeIsBitwiseIdentical() throws {
        let trainer = ToyTrainer()
        var straight = try trainer.fresh()
        try trainer.train(&straight, to: 40)

        var first = try trainer.fresh()
        try trainer.train(&first, to: 17)
        // Through bytes: serialize, parse, rebuild; nothing survives but the file.
        let bytes = try first.safeTensorsFile().serialize()
        var resumed = try TrainingCheckpoint<Float>(file: SafeTensorsFile.parse(bytes))
        #expect(resumed == first)
        try trainer.train(&resumed, to: 40)

        #expect(resumed.model.parameters.map(\.bitPattern) == straight.model.parameters.map(\.bitPattern))
        #expect(resumed.optimizer.expAvg.map(\.bitPattern) == straight.optimizer.expAvg.map(\.bitPattern))
        #expect(resumed.optimizer.expAvgSq.map(\.bitPattern) == straight.optimizer.expAvgSq.map(\.bitPattern))
        #expect(resumed == straight)
        #expect(straight.optimizer.step == 40)

        // Training did something: the loss fell.
        let firstLoss = try trainer.lossAt(trainer.fresh())
        let lastLoss = try trainer.lossAt(straight)
        #expect(lastLoss < firstLoss)
    }

    @Test func checkpointFileLayoutAndAtomicWrite() throws {
        let trainer = ToyTrainer()
        var ckpt = try trainer.fresh()
        try trainer.train(&ckpt, to: 3)
        let file = try ckpt.safeTensorsFile()
        #expect(file["layers.0.weight"]?.shape == [16, 6])
        #expect(file["layers.0.weight"]?.dtype == .F32)
        #expect(file["layers.2.bias"]?.shape == [2])
        #expect(file["optim.layers.1.weight.exp_avg"]?.shape == [16, 16])
        #expect(file["optim.layers.1.weight.exp_avg_sq"]?.dtype == .F32)
        #expect(file["optim.step"]?.shape == [])
        #expect(try file["optim.step"]?.int64Values() == [3])
        #expect(file.metadata["format"] == "worker-ckpt/1")
        #expect(file.metadata["step"] == "3" && file.metadata["rng_counter"] == "3")
        #expect(file.metadata["seed"] == String(UInt64(0xC0FFEE)))
        #expect(file.metadata["ref_sha256"] == "00")
        #expect(try file["layers.1.weight"]!.float32Values() == ckpt.model.weight(1).scalars)

        var template = Array("/tmp/tessera-ckpt-XXXXXX".utf8CString)
        let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        defer {
            unlink(dir + "/c.safetensors")
            rmdir(dir)
        }
        try ckpt.write(toPath: dir + "/c.safetensors")
        #expect(try TrainingCheckpoint<Float>.read(path: dir + "/c.safetensors") == ckpt)

        // A checkpoint missing a tensor is refused with the tensor's name.
        var broken = file
        broken.tensors.removeAll { $0.name == "optim.layers.0.bias.exp_avg" }
        #expect {
            try TrainingCheckpoint<Float>(file: broken)
        } throws: { e in
            (e as? ComputeError)?.message.contains("optim.layers.0.bias.exp_avg") == true
        }
        // Float64 files do not load into Float models.
        let asDouble = try TrainingCheckpoint<Double>(
            model: MLP(sizes: [2, 2], activation: .relu, seed: 1),
            optimizer: Adam(configuration: .adam(), parameterCount: 6), seed: 1, rngCounter: 0, step: 0, algo: "x")
        #expect(throws: ComputeError.self) { try TrainingCheckpoint<Float>(file: asDouble.safeTensorsFile()) }
    }

    @Test func scheduleFactors() throws {
        #expect(LRSchedule.constant.factor(step: 7) == 1)
        #expect(LRSchedule.linearWarmup(warmupSteps: 4).factor(step: 1) == 0.25)
        #expect(LRSchedule.linearWarmup(warmupSteps: 4).factor(step: 9) == 1)
        let c = LRSchedule.cosine(warmupSteps: 10, totalSteps: 110, minFactor: 0.1)
        #expect(c.factor(step: 5) == 0.5)
        #expect(c.factor(step: 10) == 1)
        #expect(abs(c.factor(step: 60) - 0.55) < 1e-12)
        #expect(abs(c.factor(step: 110) - 0.1) < 1e-12)
        #expect(abs(c.factor(step: 500) - 0.1) < 1e-12)
        for s in [LRSchedule.constant, .linearWarmup(warmupSteps: 3), c] {
            #expect(try LRSchedule(text: s.text) == s)
        }
    }
}

extension ToyTrainer {
    func lossAt(_ ckpt: TrainingCheckpoint<Float>) throws -> Double {
        var total = 0.0
        for step in 100..<104 {
            let (x, y) = batchData(step: step)
            let out = try ckpt.model.predict(Tensor(shape: [Self.batch, 6], scalars: x))
            total += try Loss.mse(out, Tensor(shape: [Self.batch, 2], scalars: y)).loss
        }
        return total
    }
}

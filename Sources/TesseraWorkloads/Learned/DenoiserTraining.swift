// `kind: sampling`, `algorithm: ddpm-train` (WORKLOADS.md §1 S2): trains the noise-prediction MLP by denoising score
// matching on a Gaussian-mixture target, streams loss / excess / grad-norm / lr / per-timestep-bucket excess, and
// checkpoints (safetensors, PyTorch names) every `checkpoint_every` updates and at the end. One training shard: the
// job is not data-parallel (§4: learned samplers fan out a training shard, then sampling shards that read its
// checkpoint). A `ddpm`/`ddim` job with `params.model.from_job` samples with the result. Parameters: docs/jobspec.md.

import TesseraCompute
import TesseraCore

public struct DenoiserTraining: TypedAlgorithm {
    public var kind: JobKind { .sampling }
    public var name: String { DenoiserTrainer.algorithmName }
    public var summary: String {
        "Train a noise-prediction MLP (DDPM loss) on a Gaussian mixture, for ddpm/ddim with params.model"
    }

    public init() {}

    static let allowed = [
        "target", "schedule", "network", "steps", "batch", "lr", "lr_min", "warmup", "grad_clip", "eval_samples",
        "eval_every", "log_every",
    ]

    public func config(_ spec: JobSpec) throws -> DenoiserTrainingConfig {
        let p = spec.paramsReader
        try p.rejectUnknown(Self.allowed)
        let target = try LearnedSpec.target(p)
        let schedule = try LearnedSpec.schedule(p)
        var hidden = [128, 128, 128]
        var embedding = 32
        if p.has("network") {
            let n = try p.object("network")
            try n.rejectUnknown(["hidden", "time_embedding", "activation"])
            _ = try n.string("activation", default: "silu", allowed: ["silu"])
            if n.has("hidden") {
                let h = try n.doubles("hidden")
                guard !h.isEmpty, h.count <= 8, h.allSatisfy({ $0 == $0.rounded() && $0 >= 1 && $0 <= 4096 }) else {
                    throw n.error("hidden", "params.network.hidden must be 1 to 8 whole widths between 1 and 4096")
                }
                hidden = h.map { Int($0) }
            }
            embedding = try n.int("time_embedding", default: 32, range: 2...1024)
            guard embedding % 2 == 0 else {
                throw n.error("time_embedding", "params.network.time_embedding must be even (sin and cos halves)")
            }
        }
        let steps = try p.int("steps", default: 10_000, range: 1...10_000_000)
        let batch = try p.int("batch", default: 512, range: 1...65_536)
        let lr = try p.double("lr", range: 1e-8...1, default: 1e-3)
        let lrMin = try p.double("lr_min", range: 0...1, default: min(1e-5, lr))
        guard lrMin <= lr else { throw p.error("lr_min", "params.lr_min (\(lrMin)) must not exceed params.lr (\(lr))") }
        let warmup = try p.int("warmup", default: 0, range: 0...10_000_000)
        guard warmup < steps else {
            throw p.error("warmup", "params.warmup (\(warmup)) must be smaller than params.steps (\(steps))")
        }
        let clip = p.has("grad_clip") ? try p.double("grad_clip", range: 1e-12...1e12) : nil
        let evalSamples = try p.int("eval_samples", default: 50_000, range: 1...1_000_000)
        let evalEvery = try p.int("eval_every", default: 500, range: 1...10_000_000)
        let logEvery = try p.int("log_every", default: 10, range: 1...10_000_000)
        do {
            return try DenoiserTrainingConfig(
                target: target, schedule: schedule, hidden: hidden, timeEmbedding: embedding, steps: steps,
                batch: batch, learningRate: lr, minLearningRate: lrMin, warmupSteps: warmup, gradClip: clip,
                evalSamples: evalSamples, evalEvery: evalEvery, logEvery: logEvery, seed: spec.seed)
        } catch let e as SamplingError {
            throw p.source.error("params", "params: \(e.message)")
        }
    }

    /// The params as stored in checkpoints (canonical JSON text), so a resume can check it continues the same run.
    static func configText(_ spec: JobSpec) -> String { JSONValue.object(spec.params).render() }

    /// `{"role": "train"}`: the one training shard.
    public struct Slice: Codable, Sendable, Hashable {
        public enum Role: String, Codable, Sendable {
            case train
        }
        public var role: Role
    }

    /// The training shard's summary: the last update's numbers and the final evaluation.
    public struct Summary: Codable, Sendable, Equatable {
        public var steps: Int
        public var loss: Double?
        public var gradNorm: Double?
        public var lr: Double?
        public var excess: Double
        /// Per timestep bucket; nil (null) for a bucket with no evaluation samples.
        public var excessBuckets: [Double?]
        public var evalLoss: Double
        public var evalLossExact: Double
        public var parameters: Int

        enum CodingKeys: String, CodingKey {
            case steps, loss, gradNorm = "grad_norm", lr, excess, excessBuckets = "excess_buckets"
            case evalLoss = "eval_loss", evalLossExact = "eval_loss_exact", parameters
        }
    }

    public func configure(_ spec: JobSpec) throws -> DenoiserTrainingConfig { try config(spec) }

    public func plan(_ spec: JobSpec, config c: DenoiserTrainingConfig) throws -> [TypedShardSlice<Slice>] {
        guard spec.shards == 1 else {
            throw spec.source.error(
                "shards",
                "ddpm-train runs as one training shard (it is not data-parallel); use shards: 1 and give the "
                    + "sampling job that reads the network (params.model.from_job) the shards")
        }
        return [TypedShardSlice(Slice(role: .train), totalSteps: Int64(c.steps))]
    }

    public func run(_ slice: Slice, config c: DenoiserTrainingConfig, task: ShardTask, sink: any ShardSink) throws
        -> TypedShardOutput<Summary>
    {
        let text = Self.configText(task.spec)
        let trainer: DenoiserTrainer
        if let resume = task.resume {
            trainer = try DenoiserTrainer(config: c, configText: text, checkpoint: resume.bytes)
            sink.log("resumed from the checkpoint at update \(trainer.step) of \(c.steps) (network, Adam moments and Philox counter restored)")
        } else {
            trainer = try DenoiserTrainer(config: c, configText: text)
            sink.log("training from scratch: \(c.steps) updates, \(trainer.network.parameterCount) parameters")
        }
        if trainer.step == 0 { emit(trainer.evaluate(), step: 0, sink: sink) }
        while trainer.step < c.steps {
            if sink.shouldStop { throw ShardStopped() }
            let m = trainer.trainStep()
            let k = m.step
            guard m.loss.isFinite else {
                throw ShardError("training diverged at update \(k): loss \(m.loss); lower params.lr or set grad_clip")
            }
            if k % c.logEvery == 0 || k == c.steps {
                sink.metric("loss", step: Int64(k), value: m.loss)
                sink.metric("grad_norm", step: Int64(k), value: m.gradNorm)
                sink.metric("lr", step: Int64(k), value: m.learningRate)
            }
            if k % c.evalEvery == 0 && k < c.steps {
                let e = trainer.evaluate()
                emit(e, step: k, sink: sink)
                sink.log("evaluation at update \(k): eval_loss \(e.evalLoss), excess \(e.excess)")
            }
            sink.progress(step: Int64(k))
            if k == c.steps || (task.spec.checkpointEvery.map { k % $0 == 0 } ?? false) {
                try sink.blob(.checkpoint, step: Int64(k), bytes: try trainer.checkpoint())
            }
        }
        if sink.shouldStop { throw ShardStopped() }
        let final = trainer.evaluate()
        emit(final, step: c.steps, sink: sink)
        sink.log("trained: final eval_loss \(final.evalLoss), excess \(final.excess)")
        return TypedShardOutput(
            summary: Summary(
                steps: c.steps, loss: trainer.last?.loss, gradNorm: trainer.last?.gradNorm,
                lr: trainer.last?.learningRate, excess: final.excess,
                excessBuckets: final.bucketExcess.map { $0.isFinite ? $0 : nil }, evalLoss: final.evalLoss,
                evalLossExact: final.evalLossExact, parameters: trainer.network.parameterCount))
    }

    func emit(_ e: DenoiserEvaluation, step: Int, sink: any ShardSink) {
        let k = Int64(step)
        sink.metric("excess", step: k, value: e.excess)
        sink.metric("eval_loss", step: k, value: e.evalLoss)
        sink.metric("eval_loss_exact", step: k, value: e.evalLossExact)
        for (b, v) in e.bucketExcess.enumerated() where v.isFinite {
            sink.metric("excess_bucket_\(b)", step: k, value: v)
        }
    }

    public func makeReducer(_ spec: JobSpec, config c: DenoiserTrainingConfig) throws -> SummaryReducer<Summary> {
        SummaryReducer { try Self.merge(c, summaries: $0) }
    }

    /// The result: the one shard's summary plus what describes the network and its checkpoint.
    static func merge(_ c: DenoiserTrainingConfig, summaries: [Summary]) throws -> JSONValue {
        guard summaries.count == 1, case .object(var o) = try TypedCoding.encode(summaries[0], "the summary") else {
            throw ShardError("ddpm-train has one shard; got \(summaries.count) outputs")
        }
        o["network"] = .object([
            "sizes": .array(c.architecture.sizes.map { .int($0) }), "activation": .string("silu"),
            "time_embedding": .int(c.architecture.timeEmbedding), "input": .string("[x, temb(t)]"),
        ])
        o["eval_samples"] = .int(c.evalSamples)
        o["checkpoint"] = .object(["shard": .int(0), "step": .int(c.steps), "format": .string("worker-ckpt/1")])
        o["target"] = SamplingJSON(spelling: .shortest).target(c.target)
        o["schedule"] = SamplingJSON(spelling: .shortest).schedule(c.schedule)
        return .object(o)
    }
}

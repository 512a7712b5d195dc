// `ddpm` / `ddim` with `params.model: {from_job: TRAIN_JOB}`: the shard fetches the `ddpm-train` job's checkpoint
// through the worker (`ShardSink.fetchJobBlob`), checks that it was trained on this job's target and schedule, and
// samples with eps_theta instead of the exact eps*. Everything else (Philox noise, block statistics, exact merge) is
// the exact-score sampler's, so the result's metrics compare the learned sampler with the same noise floor.

import TesseraCompute
import TesseraCore

/// A checkpoint's network ready to sample, with what identifies the checkpoint.
public struct LoadedNoiseNetwork {
    public var model: NetworkNoiseModel
    /// The training step of the checkpoint.
    public var step: Int64
    /// SHA-256 of the checkpoint file (what the blob store keys it by).
    public var sha256: String
}

extension NetworkNoiseModel {
    /// Rebuilds eps_theta from a `ddpm-train` checkpoint, refusing one trained on another target or schedule (the
    /// sampler's result is scored against `target`, and eps_theta is only meaningful on the schedule it learned).
    public static func load(checkpoint bytes: [UInt8], target: GaussianMixture, schedule: BetaSchedule) throws
        -> NetworkNoiseModel
    {
        let file: SafeTensorsFile
        let ckpt: TrainingCheckpoint<Float>
        do {
            file = try SafeTensorsFile.parse(bytes)
            ckpt = try TrainingCheckpoint<Float>(file: file)
        } catch {
            throw ShardError("the model checkpoint is not a readable worker-ckpt/1 file: \(error)")
        }
        guard ckpt.algo == DenoiserTrainer.algorithmName else {
            throw ShardError("the model checkpoint was written by \(ckpt.algo), not \(DenoiserTrainer.algorithmName)")
        }
        func f64(_ name: String) throws -> [Double] {
            guard let t = file[name], t.dtype == .F64 else {
                throw ShardError("the model checkpoint has no F64 tensor \(name)")
            }
            return try t.float64Values()
        }
        let betas = try f64("schedule.betas")
        guard betas == schedule.betas else {
            throw ShardError(
                "params.schedule differs from the schedule the model was trained on (checkpoint: T = \(betas.count), "
                    + "metadata \(file.metadata["schedule"] ?? "?")); use the training job's schedule")
        }
        let weights = try f64("target.weights")
        let means = try f64("target.means")
        let stds = try f64("target.stds")
        guard weights == target.weights, means == target.means.flatMap({ $0 }), stds == target.stds else {
            throw ShardError(
                "params.target differs from the target the model was trained on; use the training job's target "
                    + "(the result is scored against it)")
        }
        guard let embedding = file.metadata["time_embedding"].flatMap({ Int($0) }) else {
            throw ShardError("the model checkpoint lacks the time_embedding metadata")
        }
        let architecture = DenoiserArchitecture(
            dimension: target.dimension, hidden: Array(ckpt.model.sizes.dropFirst().dropLast()),
            timeEmbedding: embedding)
        return try NetworkNoiseModel(network: ckpt.model, architecture: architecture, timesteps: schedule.steps)
    }
}

extension DiffusionSampling {
    /// The network of `params.model` for one shard, or nil for the exact score.
    func learnedModel(_ ref: LearnedModelReference?, config: SamplingConfig, sink: any ShardSink) throws
        -> LoadedNoiseNetwork?
    {
        guard let ref else { return nil }
        let blob = try sink.fetchJobBlob(jobID: ref.jobID, shard: 0, kind: .checkpoint, step: ref.step)
        let model = try NetworkNoiseModel.load(
            checkpoint: blob.bytes, target: config.target, schedule: config.schedule)
        return LoadedNoiseNetwork(model: model, step: blob.step, sha256: blob.sha256)
    }
}

/// The checkpoints the shards of a learned sampling job say they sampled with (`model_sha256`@`model_step` from
/// each summary), collected as the shards are merged.
struct LearnedModelEcho {
    private var used: Set<String> = []
    private var first: (sha256: String?, step: Int64?)?

    mutating func add(sha256: String?, step: Int64?) {
        used.insert("\(sha256 ?? "?")@\(step ?? -1)")
        if first == nil { first = (sha256, step) }
    }

    /// Adds `model: {from_job, step, sha256}` to a learned job's merged result (`ref` non-nil); every shard must
    /// have sampled with the same checkpoint.
    func echo(_ ref: LearnedModelReference?, into result: JSONValue) throws -> JSONValue {
        guard let ref else { return result }
        guard used.count == 1, let sha = first?.sha256, let step = first?.step else {
            throw ShardError("shards sampled with different (or missing) model checkpoints: \(used.sorted())")
        }
        guard var o = result.objectValue else { return result }
        o["model"] = .object([
            "from_job": .number(Double(ref.jobID)), "step": .number(Double(step)), "sha256": .string(sha),
        ])
        return .object(o)
    }
}

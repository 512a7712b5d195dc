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
    func learnedModel(_ task: ShardTask, config: SamplingConfig, sink: any ShardSink) throws -> LoadedNoiseNetwork? {
        guard let ref = try LearnedModelReference.parse(task.spec) else { return nil }
        let blob = try sink.fetchJobBlob(jobID: ref.jobID, shard: 0, kind: .checkpoint, step: ref.step)
        let model = try NetworkNoiseModel.load(
            checkpoint: blob.bytes, target: config.target, schedule: config.schedule)
        return LoadedNoiseNetwork(model: model, step: blob.step, sha256: LearnedSHA256.hex(blob.bytes))
    }

    /// Shard summary keys naming the checkpoint used.
    static func learnedSummary(_ loaded: LoadedNoiseNetwork?, into summary: inout JSONObject) {
        guard let loaded else { return }
        summary["model_step"] = .number(Double(loaded.step))
        summary["model_sha256"] = .string(loaded.sha256)
    }

    /// Adds `model: {from_job, step, sha256}` to a learned job's merged result; every shard must have sampled with
    /// the same checkpoint.
    func echoLearnedModel(_ spec: JobSpec, outputs: [ShardOutput], into result: JSONValue) throws -> JSONValue {
        guard let ref = try LearnedModelReference.parse(spec) else { return result }
        let used = Set(outputs.map { "\($0.summary["model_sha256"]?.stringValue ?? "?")@\($0.summary["model_step"]?.intValue ?? -1)" })
        guard used.count == 1, let first = outputs.first, let sha = first.summary["model_sha256"]?.stringValue,
            let step = first.summary["model_step"]?.intValue
        else {
            throw ShardError("shards sampled with different (or missing) model checkpoints: \(used.sorted())")
        }
        guard var o = result.objectValue else { return result }
        o["model"] = .object([
            "from_job": .number(Double(ref.jobID)), "step": .int(step), "sha256": .string(sha),
        ])
        return .object(o)
    }
}

/// SHA-256 (FIPS 180-4), for naming a fetched checkpoint in results without a crypto dependency in the workloads.
enum LearnedSHA256 {
    static let k: [UInt32] = [
        0x428a_2f98, 0x7137_4491, 0xb5c0_fbcf, 0xe9b5_dba5, 0x3956_c25b, 0x59f1_11f1, 0x923f_82a4, 0xab1c_5ed5,
        0xd807_aa98, 0x1283_5b01, 0x2431_85be, 0x550c_7dc3, 0x72be_5d74, 0x80de_b1fe, 0x9bdc_06a7, 0xc19b_f174,
        0xe49b_69c1, 0xefbe_4786, 0x0fc1_9dc6, 0x240c_a1cc, 0x2de9_2c6f, 0x4a74_84aa, 0x5cb0_a9dc, 0x76f9_88da,
        0x983e_5152, 0xa831_c66d, 0xb003_27c8, 0xbf59_7fc7, 0xc6e0_0bf3, 0xd5a7_9147, 0x06ca_6351, 0x1429_2967,
        0x27b7_0a85, 0x2e1b_2138, 0x4d2c_6dfc, 0x5338_0d13, 0x650a_7354, 0x766a_0abb, 0x81c2_c92e, 0x9272_2c85,
        0xa2bf_e8a1, 0xa81a_664b, 0xc24b_8b70, 0xc76c_51a3, 0xd192_e819, 0xd699_0624, 0xf40e_3585, 0x106a_a070,
        0x19a4_c116, 0x1e37_6c08, 0x2748_774c, 0x34b0_bcb5, 0x391c_0cb3, 0x4ed8_aa4a, 0x5b9c_ca4f, 0x682e_6ff3,
        0x748f_82ee, 0x78a5_636f, 0x84c8_7814, 0x8cc7_0208, 0x90be_fffa, 0xa450_6ceb, 0xbef9_a3f7, 0xc671_78f2,
    ]

    static func hex(_ message: [UInt8]) -> String {
        var h: [UInt32] = [
            0x6a09_e667, 0xbb67_ae85, 0x3c6e_f372, 0xa54f_f53a, 0x510e_527f, 0x9b05_688c, 0x1f83_d9ab, 0x5be0_cd19,
        ]
        var data = message
        data.append(0x80)
        while data.count % 64 != 56 { data.append(0) }
        let bits = UInt64(message.count) &* 8
        for i in (0..<8).reversed() { data.append(UInt8(truncatingIfNeeded: bits >> (UInt64(i) * 8))) }
        var w = [UInt32](repeating: 0, count: 64)
        data.withUnsafeBufferPointer { p in
            var offset = 0
            while offset < p.count {
                for i in 0..<16 {
                    let b = offset + 4 * i
                    w[i] = UInt32(p[b]) << 24 | UInt32(p[b + 1]) << 16 | UInt32(p[b + 2]) << 8 | UInt32(p[b + 3])
                }
                for i in 16..<64 {
                    let s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
                    let s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
                    w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
                }
                var (a, b, c, d, e, f, g, hh) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])
                for i in 0..<64 {
                    let s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)
                    let ch = (e & f) ^ (~e & g)
                    let t1 = hh &+ s1 &+ ch &+ k[i] &+ w[i]
                    let s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)
                    let maj = (a & b) ^ (a & c) ^ (b & c)
                    let t2 = s0 &+ maj
                    (hh, g, f, e, d, c, b, a) = (g, f, e, d &+ t1, c, b, a, t1 &+ t2)
                }
                h[0] &+= a
                h[1] &+= b
                h[2] &+= c
                h[3] &+= d
                h[4] &+= e
                h[5] &+= f
                h[6] &+= g
                h[7] &+= hh
                offset += 64
            }
        }
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for word in h {
            for shift in stride(from: 28, through: 0, by: -4) { out.append(digits[Int((word >> UInt32(shift)) & 0xf)]) }
        }
        return String(decoding: out, as: UTF8.self)
    }

    @inline(__always) static func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }
}

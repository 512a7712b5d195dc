// Spec parsing shared by `ddpm-train` and the learned-model option of `ddpm`/`ddim` (`params.model`).
// Target and schedule keys are the same as the exact-score sampler's (docs/jobspec.md); every error carries the line.

import TesseraCompute
import TesseraCore

enum LearnedSpec {
    static let targetKeys = ["type", "means", "stds", "weights"]
    static let scheduleKeys = ["type", "beta_start", "beta_end", "steps"]

    /// `params.target`: a Gaussian mixture (required).
    static func target(_ p: Params) throws -> GaussianMixture {
        let t = try p.object("target")
        try t.rejectUnknown(targetKeys)
        _ = try t.string("type", default: "gmm", allowed: ["gmm"])
        let means = try t.matrix("means")
        let stds = try t.doubles("stds")
        let weights = t.has("weights") ? try t.doubles("weights") : nil
        do {
            return try GaussianMixture(weights: weights, means: means, stds: stds)
        } catch let e as SamplingError {
            throw t.source.error(t.path, "params.target: \(e.message)")
        }
    }

    /// `params.schedule` (optional): linear betas, default diffusers' 1e-4 .. 0.02 over T = 1000.
    static func schedule(_ p: Params) throws -> BetaSchedule {
        guard p.has("schedule") else {
            return try BetaSchedule.linear(betaStart: 0.0001, betaEnd: 0.02, steps: 1000)
        }
        let s = try p.object("schedule")
        try s.rejectUnknown(scheduleKeys)
        _ = try s.string("type", default: "linear", allowed: ["linear"])
        let start = try s.double("beta_start", range: 1e-8...0.5, default: 0.0001)
        let end = try s.double("beta_end", range: 1e-8...0.999, default: 0.02)
        let steps = try s.int("steps", default: 1000, range: 1...100_000)
        do {
            return try BetaSchedule.linear(betaStart: start, betaEnd: end, steps: steps)
        } catch let e as SamplingError {
            throw s.source.error(s.path, "params.schedule: \(e.message)")
        }
    }
}

/// `params.model: {from_job: ID, step: K}` of a `ddpm`/`ddim` job: sample with the network trained by job ID
/// (a `ddpm-train` job) instead of the exact score. The job must be in `depends_on`, so that the coordinator starts
/// the sampler only after the training job succeeded; `step` picks a checkpoint (default: the newest, i.e. final).
public struct LearnedModelReference: Sendable, Equatable {
    public var jobID: Int64
    public var step: Int64?

    public init(jobID: Int64, step: Int64? = nil) {
        self.jobID = jobID
        self.step = step
    }

    /// nil when the spec has no `params.model` (exact score).
    public static func parse(_ spec: JobSpec) throws -> LearnedModelReference? {
        let p = spec.paramsReader
        guard p.has("model") else { return nil }
        let m = try p.object("model")
        try m.rejectUnknown(["from_job", "step"])
        let job = try m.int("from_job", range: 1...Int(Int64.max))
        guard spec.dependsOn.contains(Int64(job)) else {
            throw m.error(
                "from_job",
                "params.model.from_job is job \(job), which is not in depends_on \(spec.dependsOn.map(String.init)); "
                    + "add `depends_on: [\(job)]` so the sampler starts only after the training job succeeded")
        }
        let step = try m.optionalInt("step", range: 1...Int(Int64.max))
        return LearnedModelReference(jobID: Int64(job), step: step.map(Int64.init))
    }
}

// Noise schedules and the sampler step rules of WORKLOADS.md §1 S1 (diffusers DDIMScheduler / DDPMScheduler).

import Foundation

/// A discrete forward-noise schedule with T training steps: beta_t for t = 0..T-1 and a_t = prod_{s<=t} (1 - beta_s).
public struct BetaSchedule: Sendable, Equatable {
    /// beta_t, t = 0..<T.
    public let betas: [Double]
    /// a_t = alphabar_t = prod_{s<=t} (1 - beta_s), t = 0..<T.
    public let alphaBar: [Double]
    /// The parameters this schedule was built from, echoed in results.
    public let betaStart: Double
    public let betaEnd: Double

    /// T, the number of training steps.
    public var steps: Int { betas.count }

    /// diffusers' "linear": beta_t = linspace(betaStart, betaEnd, T)[t] (computed in Double; diffusers uses float32,
    /// which moves a_t by ~1e-7 relative), then the cumulative product of 1 - beta_t.
    public static func linear(betaStart: Double, betaEnd: Double, steps: Int) throws -> BetaSchedule {
        guard steps >= 1 else { throw SamplingError(.invalidSchedule, "schedule steps is \(steps); it must be >= 1") }
        guard betaStart.isFinite, betaEnd.isFinite, betaStart > 0, betaEnd < 1, betaStart <= betaEnd else {
            throw SamplingError(
                .invalidSchedule,
                "linear schedule needs 0 < beta_start <= beta_end < 1; got beta_start=\(betaStart), beta_end=\(betaEnd)"
            )
        }
        var betas = [Double](repeating: betaStart, count: steps)
        if steps > 1 {
            let span = betaEnd - betaStart
            for t in 0..<steps { betas[t] = betaStart + span * Double(t) / Double(steps - 1) }
        }
        var alphaBar = [Double](repeating: 0, count: steps)
        var product = 1.0
        for t in 0..<steps {
            product *= 1 - betas[t]
            alphaBar[t] = product
        }
        return BetaSchedule(betas: betas, alphaBar: alphaBar, betaStart: betaStart, betaEnd: betaEnd)
    }
}

/// Which reverse update to run.
public enum SamplerKind: Sendable, Equatable {
    /// diffusers DDPMScheduler.step, variance_type "fixed_small", clip_sample off.
    case ddpm
    /// diffusers DDIMScheduler.step with this eta (0 = deterministic DDIM), clip_sample off.
    case ddim(eta: Double)

    /// The job-spec algorithm name ("ddpm" / "ddim").
    public var algorithmName: String {
        switch self {
        case .ddpm: "ddpm"
        case .ddim: "ddim"
        }
    }
}

/// The precomputed constants of one reverse step t -> prev. For both rules,
/// x_prev = xCoefficient * x + epsCoefficient * eps + sigma * z   is algebraically the diffusers update; the code
/// below keeps the diffusers order of operations instead (via x0h), see `SamplerStep.apply`.
struct SamplerStep: Sendable, Equatable {
    /// The timestep t this step starts from (an index into the schedule).
    let t: Int
    /// prev = t - T/S (may be negative; then a_prev = 1).
    let prev: Int
    let alphaBar: Double
    let alphaBarPrev: Double
    /// sqrt(1 - a_t) and 1 / sqrt(a_t), for x0h = (x - sqrt(1 - a_t) eps) / sqrt(a_t).
    let sqrtOneMinusAlphaBar: Double
    let inverseSqrtAlphaBar: Double
    /// Coefficient of x0h in x_prev.
    let x0Coefficient: Double
    /// Coefficient of eps (DDIM) in x_prev, 0 for DDPM.
    let epsCoefficient: Double
    /// Coefficient of x (DDPM) in x_prev, 0 for DDIM.
    let xCoefficient: Double
    /// Standard deviation of the fresh noise; 0 means no noise is drawn for this step.
    let sigma: Double

    init(schedule: BetaSchedule, sampler: SamplerKind, t: Int, prev: Int) {
        self.t = t
        self.prev = prev
        let a = schedule.alphaBar[t]
        let ap = prev >= 0 ? schedule.alphaBar[prev] : 1.0  // set_alpha_to_one / DDPM's `self.one`
        alphaBar = a
        alphaBarPrev = ap
        sqrtOneMinusAlphaBar = (1 - a).squareRoot()
        inverseSqrtAlphaBar = 1 / a.squareRoot()
        let betaProd = 1 - a
        let betaProdPrev = 1 - ap
        switch sampler {
        case .ddim(let eta):
            // DDIMScheduler._get_variance: (1 - a_p)/(1 - a_t) * (1 - a_t/a_p); std_dev_t = eta * sqrt(variance).
            let variance = (betaProdPrev / betaProd) * (1 - a / ap)
            let std = eta * variance.squareRoot()
            x0Coefficient = ap.squareRoot()
            epsCoefficient = (1 - ap - std * std).squareRoot()
            xCoefficient = 0
            sigma = eta > 0 ? std : 0
        case .ddpm:
            // DDPMScheduler.step: a' = a_t/a_p, b' = 1 - a'.
            let currentAlpha = a / ap
            let currentBeta = 1 - currentAlpha
            x0Coefficient = ap.squareRoot() * currentBeta / betaProd
            xCoefficient = currentAlpha.squareRoot() * betaProdPrev / betaProd
            epsCoefficient = 0
            // fixed_small: variance = (1 - a_p)/(1 - a_t) * b', clamped at 1e-20; only added when t > 0.
            if t > 0 {
                let variance = max(betaProdPrev / betaProd * currentBeta, 1e-20)
                sigma = variance.squareRoot()
            } else {
                sigma = 0
            }
        }
    }

    /// One coordinate of the update, in diffusers' order of operations:
    /// x0h = (x - sqrt(1 - a_t) eps) / sqrt(a_t);
    /// DDIM: x_p = sqrt(a_p) x0h + sqrt(1 - a_p - sig^2) eps (+ sig z);
    /// DDPM: x_p = [sqrt(a_p) b' / (1 - a_t)] x0h + [sqrt(a') (1 - a_p)/(1 - a_t)] x (+ sig z).
    @inline(__always)
    func apply(x: Double, eps: Double) -> Double {
        let x0h = (x - sqrtOneMinusAlphaBar * eps) * inverseSqrtAlphaBar
        return x0Coefficient * x0h + epsCoefficient * eps + xCoefficient * x
    }
}

/// The leading-spaced reverse timesteps of diffusers: t_i = i * (T / S) (integer division), run from i = S-1 down
/// to 0, with prev = t - T/S.
func samplerSteps(schedule: BetaSchedule, sampler: SamplerKind, samplingSteps: Int) -> [SamplerStep] {
    let ratio = schedule.steps / samplingSteps
    return (0..<samplingSteps).reversed().map { i in
        let t = i * ratio
        return SamplerStep(schedule: schedule, sampler: sampler, t: t, prev: t - ratio)
    }
}

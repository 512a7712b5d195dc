// The `loss:` values of `algorithm: dpo`: TRL's DPOTrainer loss types (huggingface/trl trl/trainer/dpo_trainer.py,
// the `loss_type` branches of the loss computation), restated for the toy LM (WORKLOADS.md §3 P1; docs/training.md).
//
// Notation, per pair: u(y) = log pi_theta(y|x) - log pi_ref(y|x) (TRL's chosen/rejected "logratios"),
// a = beta u(y_w), b = beta u(y_l) (TRL's rewards/chosen and rewards/rejected), z = a - b = beta delta,
// eps = label_smoothing, L = the response length in tokens (every toy-LM response has exactly L tokens).
//
//  sigmoid   -(1 - eps) log sigma(z) - eps log sigma(-z)                       DPO, Rafailov et al. 2023 (eps: cDPO)
//  robust    [-(1 - eps) log sigma(z) + eps log sigma(-z)] / (1 - 2 eps)       rDPO, Chowdhury et al. 2024
//  ipo       (delta / L - 1 / (2 beta))^2, delta = u(y_w) - u(y_l)             IPO, Azar et al. 2023, Eq. 17 (TRL
//            averages each log-ratio over the completion's tokens; with equal lengths that is delta / L)
//  exo_pair  sigma(z) (log sigma(z) - log(1 - eps)) + sigma(-z) (log sigma(-z) - log eps)
//            = KL(Bernoulli(sigma(z)) || Bernoulli(1 - eps))                   EXO, Ji et al. 2024, Eq. 16 (eps > 0)
//  nca_pair  -log sigma(a) - 1/2 log sigma(-a) - 1/2 log sigma(-b)            NCA, Chen et al. 2024
//  bco_pair  -log sigma(a) - log sigma(-b)                                     BCO, Jung et al. 2024 (current TRL;
//            older TRL subtracted a running mean of the rewards inside both sigmoids)
//  apo_zero  (1 - sigma(a)) + sigma(b)                                         APO, D'Oosterlinck et al. 2024, Eq. 7
//  apo_down  sigma(a) + (1 - sigma(z))                                         APO, Eq. 8
//
//  hinge     relu(1 - z)                                                       SLiC, Zhao et al. 2023 (TRL's hinge)
//            Its check is on consistent labels (every pair of a context agrees with one ranking, e.g. a data file):
//            the loss reaches 0, i.e. every pair's margin z >= 1. The "expected margin >= 1 on pairs with P > 1/2"
//            of WORKLOADS.md does not hold for Bradley-Terry labels (docs/training.md §7), so none is claimed there.
//
// Not here: `sppo_hard`, `aot`, `aot_unpaired`, `discopop` and `sft`.
//
// Each loss is given with its exact partial derivatives in (u_w, u_l); the chain rule through the policy is the
// toy LM's (`ToyLMPolicy.backward(sequenceGradient:)`). With s(v) = sigma(v) and s'(v) = s(v) s(-v):
//  d/dz sigmoid = s(z) - (1 - eps);  d/dz robust = s(z) - (1 - eps) / (1 - 2 eps);
//  d/dz exo_pair = s'(z) (z - log((1 - eps) / eps))  (from d/dz [q log q + (1-q) log(1-q)] = s'(z) logit q = s'(z) z);
//  nca_pair: d/da = 3/2 s(a) - 1, d/db = 1/2 s(b);  bco_pair: d/da = s(a) - 1, d/db = s(b);
//  apo_zero: d/da = -s'(a), d/db = s'(b);  apo_down: d/da = s'(a), d/dz = -s'(z);
//  ipo: d/du_w = 2 (delta / L - 1 / (2 beta)) / L = -d/du_l;  hinge: d/dz = -1 for z < 1, else 0 (the
//  subgradient 0 at the kink z = 1, as torch.relu's).

import Foundation

/// A TRL DPO loss type.
enum DPOLoss: String, Sendable, CaseIterable {
    case sigmoid
    case robust
    case ipo
    case exoPair = "exo_pair"
    case ncaPair = "nca_pair"
    case bcoPair = "bco_pair"
    case apoZero = "apo_zero"
    case apoDown = "apo_down"
    case hinge

    /// Whether the loss reads `label_smoothing` (TRL ignores it elsewhere; we reject it there).
    var usesLabelSmoothing: Bool { self == .sigmoid || self == .robust || self == .exoPair }

    /// exo_pair needs eps > 0 (log eps); TRL requires it and the EXO paper recommends 1e-3, our default for it.
    static let exoDefaultSmoothing = 1e-3

    /// One pair's loss and its partial derivatives with respect to u(y_w) and u(y_l).
    func pair(chosen uw: Double, rejected ul: Double, beta: Double, smoothing eps: Double, length: Int)
        -> (loss: Double, dChosen: Double, dRejected: Double)
    {
        let a = beta * uw, b = beta * ul, z = a - b
        // Partial derivatives of the loss in (a, b, z); d/du_w = beta (da + dz), d/du_l = beta (db - dz).
        var loss: Double, da = 0.0, db = 0.0, dz = 0.0
        switch self {
        case .sigmoid:
            loss = -(1 - eps) * ToyLMMath.logSigmoid(z) - eps * ToyLMMath.logSigmoid(-z)
            dz = ToyLMMath.sigmoid(z) - (1 - eps)
        case .robust:
            loss = (-(1 - eps) * ToyLMMath.logSigmoid(z) + eps * ToyLMMath.logSigmoid(-z)) / (1 - 2 * eps)
            dz = ToyLMMath.sigmoid(z) - (1 - eps) / (1 - 2 * eps)
        case .ipo:
            let n = Double(length)
            let d = (uw - ul) / n - 1 / (2 * beta)
            return (d * d, 2 * d / n, -2 * d / n)
        case .exoPair:
            let q = ToyLMMath.sigmoid(z), qbar = ToyLMMath.sigmoid(-z)
            loss = q * (ToyLMMath.logSigmoid(z) - log1p(-eps)) + qbar * (ToyLMMath.logSigmoid(-z) - log(eps))
            dz = q * qbar * (z - (log1p(-eps) - log(eps)))
        case .ncaPair:
            loss = -ToyLMMath.logSigmoid(a) - 0.5 * ToyLMMath.logSigmoid(-a) - 0.5 * ToyLMMath.logSigmoid(-b)
            da = 1.5 * ToyLMMath.sigmoid(a) - 1
            db = 0.5 * ToyLMMath.sigmoid(b)
        case .bcoPair:
            loss = -ToyLMMath.logSigmoid(a) - ToyLMMath.logSigmoid(-b)
            da = ToyLMMath.sigmoid(a) - 1
            db = ToyLMMath.sigmoid(b)
        case .apoZero:
            let sa = ToyLMMath.sigmoid(a), sb = ToyLMMath.sigmoid(b)
            loss = (1 - sa) + sb
            da = -sa * ToyLMMath.sigmoid(-a)
            db = sb * ToyLMMath.sigmoid(-b)
        case .apoDown:
            let sa = ToyLMMath.sigmoid(a), sz = ToyLMMath.sigmoid(z)
            loss = sa + (1 - sz)
            da = sa * ToyLMMath.sigmoid(-a)
            dz = -sz * ToyLMMath.sigmoid(-z)
        case .hinge:
            loss = max(0, 1 - z)
            dz = z < 1 ? -1 : 0
        }
        return (loss, beta * (da + dz), beta * (db - dz))
    }
}

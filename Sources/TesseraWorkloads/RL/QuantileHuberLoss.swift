// The quantile Huber loss of QR-DQN and IQN (Dabney et al. 2017 eq. 9-10, 2018 eq. 3), as Dopamine computes it
// (google/dopamine jax/agents/quantile/quantile_agent.py and implicit_quantile/implicit_quantile_agent.py `train`):
// for one transition with online quantile values theta_i at levels tau_i (i < N) and target samples T_j (j < M),
//   d_ij = T_j - theta_i,  rho_ij = |tau_i - 1{d_ij < 0}| Huber_k(d_ij) / k,
//   Huber_k(d) = d^2 / 2 if |d| <= k, else k (|d| - k / 2),
//   loss = sum_i (1/M) sum_j rho_ij          (sum over the online quantiles, mean over the targets)
// and the batch loss is the mean of that over the batch. kappa = 0 is the pinball loss |tau - 1{d < 0}| |d|
// (QR-DQN-0 of the QR-DQN paper; rho's limit as k -> 0).
//
// Computed in closed form from the sorted targets instead of the N x M double sum: for theta the targets split into
// A = {T < theta - k} (rho = (1 - tau)(theta - T - k/2)), B = {theta - k <= T < theta} ((1 - tau)(theta - T)^2/(2k)),
// C = {theta <= T <= theta + k} (tau (T - theta)^2/(2k)) and D = {T > theta + k} (tau (T - theta - k/2)), so counts
// and prefix sums of T and T^2 give the loss and d loss / d theta_i in O(N log M). `QuantileHuberLossTests` checks it
// against the direct double sum.

import Foundation

enum QuantileHuberLoss {
    /// Sorted targets with prefix sums, shared by every theta of one transition.
    struct Targets {
        let sorted: [Double]
        /// prefix[j] = sum of sorted[0..<j]; square[j] = sum of squares.
        let prefix: [Double]
        let square: [Double]

        init(_ targets: [Double]) {
            sorted = targets.sorted()
            var p = [Double](repeating: 0, count: sorted.count + 1), q = p
            for (j, t) in sorted.enumerated() {
                p[j + 1] = p[j] + t
                q[j + 1] = q[j] + t * t
            }
            prefix = p
            square = q
        }

        /// The first index with sorted[index] >= x (strict: > x).
        func bound(_ x: Double, strict: Bool) -> Int {
            var lo = 0, hi = sorted.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if strict ? sorted[mid] <= x : sorted[mid] < x { lo = mid + 1 } else { hi = mid }
            }
            return lo
        }

        func sum(_ r: Range<Int>) -> Double { prefix[r.upperBound] - prefix[r.lowerBound] }
        func sumSquares(_ r: Range<Int>) -> Double { square[r.upperBound] - square[r.lowerBound] }
    }

    /// (1/M) sum_j rho(T_j - theta) at level tau, and its derivative in theta.
    static func term(theta: Double, tau: Double, kappa: Double, targets t: Targets) -> (loss: Double, gradient: Double) {
        let m = t.sorted.count
        let below = t.bound(theta - kappa, strict: false)  // A = [0, below)
        let mid = t.bound(theta, strict: false)  // B = [below, mid)
        let above = t.bound(theta + kappa, strict: true)  // C = [mid, above), D = [above, m)
        let a = 0..<below, d = above..<m
        let nA = Double(a.count), nD = Double(d.count)
        var loss = (1 - tau) * (nA * (theta - kappa / 2) - t.sum(a)) + tau * (t.sum(d) - nD * (theta + kappa / 2))
        var gradient = (1 - tau) * nA - tau * nD
        if kappa > 0 {
            let b = below..<mid, c = mid..<above
            let nB = Double(b.count), nC = Double(c.count)
            let sB = t.sum(b), sC = t.sum(c)
            // sum (theta - T)^2 = n theta^2 - 2 theta S + Q.
            loss += (1 - tau) * (nB * theta * theta - 2 * theta * sB + t.sumSquares(b)) / (2 * kappa)
            loss += tau * (nC * theta * theta - 2 * theta * sC + t.sumSquares(c)) / (2 * kappa)
            gradient += (1 - tau) * (nB * theta - sB) / kappa - tau * (sC - nC * theta) / kappa
        }
        return (loss / Double(m), gradient / Double(m))
    }

    /// One transition: sum over i of `term`; writes d loss / d theta_i into `gradient[i]`.
    static func transition(
        thetas: ArraySlice<Double>, taus: [Double], kappa: Double, targets: Targets, gradient: inout [Double],
        offset: Int, scale: Double
    ) -> Double {
        var total = 0.0
        for (i, theta) in thetas.enumerated() {
            let (l, g) = term(theta: theta, tau: taus[i], kappa: kappa, targets: targets)
            total += l
            gradient[offset + i] = g * scale
        }
        return total
    }
}

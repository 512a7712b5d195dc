#!/usr/bin/env python3
"""An independent reimplementation of Tessera's random numbers, from the seed alone (docs/reproducibility.md).

Written from docs/reproducibility.md, not from Tessera's output: Philox4x32-10, the uniform, Box-Muller, how words
are consumed, the Gaussian-mixture draw, the linear schedule, the DDPM / DDIM step, the sinusoidal time embedding,
PyTorch-default MLP initialisation (stream 8), the S2 noise network's forward pass and the toy language model's
reference logits and reward table. Plain Python for everything that must be bit-exact (integers, and math.log /
math.cos / math.sin, which are the C library's, as Swift's are on Linux); numpy only for float arrays.

  ops/reference.py              print the worked values of docs/reproducibility.md (and check the Philox KATs)

ops/reproduce-check imports this module and compares it with a running Tessera (ops/test runs it).
"""
import math

import numpy as np

MASK32 = 0xFFFFFFFF

# Stream ids (TesseraCompute/Philox.swift PhiloxStreamID, MLP.initStream, SMCConfig.resampleStream).
INITIAL_NOISE, STEP_NOISE, DATA_DRAW, MINIBATCH, TIMESTEP, ACTION, PREFERENCE_LABEL, EVAL_PROJECTIONS = range(8)
INIT_OR_SMC = 8


# ---------------------------------------------------------------------------------------------------------------
# Philox4x32-10 and the words it gives


def philox(counter, key):
    """Philox4x32-10 (Salmon et al. 2011): 10 rounds on a 4-word counter under a 2-word key. Returns 4 words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(10):
        if r > 0:
            k0 = (k0 + 0x9E3779B9) & MASK32
            k1 = (k1 + 0xBB67AE85) & MASK32
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32)
    return (c0, c1, c2, c3)


def seed_key(seed):
    """The key: the 64-bit seed as (low word, high word)."""
    return (seed & MASK32, (seed >> 32) & MASK32)


def words(seed, index, step, stream):
    """Philox4x32.words: counter (index_lo, index_hi, step, stream). Only MLP initialisation and two minibatch
    draws call this directly; with index < 2^32 it is word group 0 of `Stream` below."""
    return philox((index & MASK32, (index >> 32) & MASK32, step, stream), seed_key(seed))


def uniform(word):
    """u = ((w >> 8) + 0.5) * 2^-24: the top 24 bits, centred, so 2^-25 <= u <= 1 - 2^-25 (never 0 or 1)."""
    return ((word >> 8) + 0.5) * 2.0**-24


def box_muller(a, b):
    """Two normals from two words: r = sqrt(-2 ln u(a)), theta = 2 pi u(b); (r cos theta, r sin theta)."""
    u1, u2 = uniform(a), uniform(b)
    r = math.sqrt(-2.0 * math.log(u1))
    theta = 2.0 * math.pi * u2
    return r * math.cos(theta), r * math.sin(theta)


class Stream:
    """PhiloxStream: the words of one (seed, index, step, stream), in order. Word-group g is
    philox(counter = (index, g, step, stream)); its four words are used 0, 1, 2, 3, then group g + 1."""

    def __init__(self, seed, index, step, stream):
        assert 0 <= index < 2**32
        self.key, self.index, self.step, self.stream = seed_key(seed), index, step, stream
        self.group, self.buffer = 0, []

    def word(self):
        if not self.buffer:
            self.buffer = list(philox((self.index, self.group, self.step, self.stream), self.key))
            self.group += 1
        return self.buffer.pop(0)

    def uniform(self):
        return uniform(self.word())

    def normals(self, n):
        """n normals: Box-Muller on consecutive word pairs, both outputs used in order (cos first); an odd n
        drops the last pair's sine."""
        out = []
        while len(out) < n:
            z0, z1 = box_muller(self.word(), self.word())
            out.append(z0)
            if len(out) < n:
                out.append(z1)
        return out


# ---------------------------------------------------------------------------------------------------------------
# Sampling: targets, schedule, x_T, step noise, the sampler step


class GMM:
    def __init__(self, means, stds, weights=None):
        self.means = np.asarray(means, dtype=np.float64)
        self.stds = np.asarray(stds, dtype=np.float64)
        K = len(self.stds)
        w = np.full(K, 1.0 / K) if weights is None else np.asarray(weights, dtype=np.float64)
        self.weights = w / w.sum()
        self.d = self.means.shape[1]

    def draw(self, stream):
        """An exact draw: one uniform picks k (first k whose running weight sum exceeds u), then d normals z;
        x = mu_k + s_k z. Returns (k, x)."""
        u = stream.uniform()
        k, cumulative = 0, 0.0
        while k < len(self.weights) - 1:
            cumulative += self.weights[k]
            if u < cumulative:
                break
            k += 1
        z = np.array(stream.normals(self.d))
        return k, self.means[k] + self.stds[k] * z

    def eps_star(self, x, a):
        """The exact noise prediction at alpha-bar a: sqrt(1 - a) sum_k g_k (x - sqrt(a) mu_k) / v_k,
        v_k = a s_k^2 + 1 - a, g = softmax_k(log w_k - d/2 log v_k - |x - sqrt(a) mu_k|^2 / (2 v_k))."""
        v = a * self.stds**2 + 1 - a
        r = x[..., None, :] - math.sqrt(a) * self.means  # [..., K, d]
        logits = np.log(self.weights) - 0.5 * self.d * np.log(v) - (r**2).sum(-1) / (2 * v)
        g = np.exp(logits - logits.max(-1, keepdims=True))
        g /= g.sum(-1, keepdims=True)
        return math.sqrt(1 - a) * (g[..., None] * r / v[:, None]).sum(-2)


def linear_alpha_bar(beta_start, beta_end, T):
    betas = [beta_start + (beta_end - beta_start) * t / (T - 1) for t in range(T)] if T > 1 else [beta_start]
    out, product = [], 1.0
    for b in betas:
        product *= 1 - b
        out.append(product)
    return out


def x_T(seed, i, d):
    """Sample i's initial noise: d normals from Philox(seed; i, step 0, stream 0)."""
    return np.array(Stream(seed, i, 0, INITIAL_NOISE).normals(d))


def step_noise(seed, i, k, d):
    """The fresh noise of reverse step k (0-based in sampling order) of sample i: stream 1, step k + 1."""
    return np.array(Stream(seed, i, k + 1, STEP_NOISE).normals(d))


def sampler_steps(alpha_bar, S, sampler, eta=0.0):
    """(t, coefficients) of the S reverse steps, t = i * (T // S) for i = S-1 .. 0 ("leading" spacing)."""
    T = len(alpha_bar)
    ratio = T // S
    steps = []
    for i in reversed(range(S)):
        t, prev = i * ratio, i * ratio - ratio
        a = alpha_bar[t]
        ap = alpha_bar[prev] if prev >= 0 else 1.0
        if sampler == "ddim":
            std = eta * math.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
            c_x0, c_eps, c_x, sigma = math.sqrt(ap), math.sqrt(1 - ap - std * std), 0.0, (std if eta > 0 else 0.0)
        else:  # ddpm, fixed_small
            alpha, beta = a / ap, 1 - a / ap
            c_x0, c_eps, c_x = math.sqrt(ap) * beta / (1 - a), 0.0, math.sqrt(alpha) * (1 - ap) / (1 - a)
            sigma = math.sqrt(max((1 - ap) / (1 - a) * beta, 1e-20)) if t > 0 else 0.0
        steps.append((t, a, c_x0, c_eps, c_x, sigma))
    return steps


def sample(seed, indices, d, alpha_bar, S, sampler, eps_fn, eta=0.0):
    """The sampler on sample indices: x_T, then per step x0h = (x - sqrt(1-a) eps) / sqrt(a),
    x <- c_x0 x0h + c_eps eps + c_x x, then + sigma z (z the step noise) when sigma > 0."""
    x = np.stack([x_T(seed, i, d) for i in indices])
    for k, (t, a, c_x0, c_eps, c_x, sigma) in enumerate(sampler_steps(alpha_bar, S, sampler, eta)):
        eps = eps_fn(x, t)
        x0h = (x - math.sqrt(1 - a) * eps) * (1 / math.sqrt(a))
        x = c_x0 * x0h + c_eps * eps + c_x * x
        if sigma > 0:
            x = x + sigma * np.stack([step_noise(seed, i, k, d) for i in indices])
    return x


# ---------------------------------------------------------------------------------------------------------------
# Networks: time embedding, initialisation, forward


def time_embedding(t, D=32):
    """[sin(t w_0), ..., sin(t w_{D/2-1}), cos(t w_0), ..., cos(t w_{D/2-1})], w_j = exp(-ln(10000) j / (D/2)),
    in float64, then rounded to float32 (all sines first, then all cosines)."""
    half = D // 2
    w = [math.exp(-math.log(10000.0) * j / half) for j in range(half)]
    return np.array([math.sin(t * wj) for wj in w] + [math.cos(t * wj) for wj in w], dtype=np.float32)


def mlp_init(sizes, seed, dtype=np.float32):
    """PyTorch's nn.Linear default: every weight and bias of layer l uniform in [-1/sqrt(in_l), 1/sqrt(in_l)].
    Parameter p (flat index over W_0 [out, in] row-major, b_0, W_1, b_1, ...) is (2 u - 1) / sqrt(in_l), u the
    uniform of word 0 of Philox(seed; index p, step 0, stream 8). Returns [(W, b), ...]."""
    layers, p = [], 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        bound = 1 / math.sqrt(n_in)
        values = []
        for _ in range(n_out * n_in + n_out):
            values.append((2 * uniform(words(seed, p, 0, INIT_OR_SMC)[0]) - 1) * bound)
            p += 1
        values = np.array(values, dtype=dtype)
        layers.append((values[: n_out * n_in].reshape(n_out, n_in), values[n_out * n_in:]))
    return layers


def load_layers(tensors):
    """[(W, b), ...] from a checkpoint's layers.<l>.weight / layers.<l>.bias."""
    n = sum(1 for k in tensors if k.startswith("layers.") and k.endswith(".weight"))
    return [(tensors[f"layers.{l}.weight"], tensors[f"layers.{l}.bias"]) for l in range(n)]


def mlp_forward(layers, x, activation="silu"):
    """Linear, act, ..., Linear: y = x W^T + b per layer, in the layers' dtype (float32 for S2 networks)."""
    for l, (W, b) in enumerate(layers):
        x = x @ W.T + b
        if l < len(layers) - 1:
            x = x / (1 + np.exp(-x)) if activation == "silu" else np.maximum(x, 0)
    return x


def noise_network(layers, D=32):
    """eps_theta(x, t) = MLP([float32(x), temb(t)]), output back to float64 (the sampler's side)."""

    def eps(x, t):
        inp = np.concatenate([x.astype(np.float32), np.tile(time_embedding(t, D), (len(x), 1))], axis=1)
        return mlp_forward(layers, inp).astype(np.float64)

    return eps


def training_row(seed, index, philox_step, gmm, T):
    """Row `index` of a ddpm-train batch (update k uses philox_step k; the evaluation set step 0):
    x0 = an exact draw on stream 2, t = min(T-1, floor(u T)) with u word 0 of stream 4, e = d normals on stream 1."""
    _, x0 = gmm.draw(Stream(seed, index, philox_step, DATA_DRAW))
    t = min(T - 1, int(Stream(seed, index, philox_step, TIMESTEP).uniform() * T))
    e = np.array(Stream(seed, index, philox_step, STEP_NOISE).normals(gmm.d))
    return x0, t, e


# ---------------------------------------------------------------------------------------------------------------
# The toy language model


def toy_lm(contexts, vocab, length=1, seed=0, context_type="tabular", feature_dim=8, reference_scale=1.0,
           reward_scale=1.0, pairwise_scale=0.5):
    """Reference logits [M P, V] (row = x P + offset_t + node), reward [M, K] (y = sum_t y_t V^(L-1-t)).
    Draws: Philox(problem seed; index, step = table id, stream 2), one Stream per index, normals only."""
    M, V, L = contexts, vocab, length
    K, P = V**L, sum(V**t for t in range(L))
    offsets = [sum(V**s for s in range(t)) for t in range(L)]

    def normals(table, index, n):
        return Stream(seed, index, table, DATA_DRAW).normals(n)

    d = feature_dim
    if context_type == "features":
        phi = [normals(0, x, d) for x in range(M)]
    logits = [[0.0] * V for _ in range(M * P)]
    if context_type == "tabular":
        for row in range(M * P):
            logits[row] = [reference_scale * z for z in normals(1, row, V)]
    else:
        for node in range(P):
            w = normals(1, node, V * d)
            for x in range(M):
                for v in range(V):
                    s = 0.0
                    for j in range(d):
                        s += w[v * d + j] * phi[x][j]
                    logits[x * P + node][v] = reference_scale * s * (1 / math.sqrt(d))
    if context_type == "tabular":
        a = [normals(2, x, V) for x in range(M)]
    else:
        u = [normals(2, v, d) for v in range(V)]
        a = [[0.0] * V for _ in range(M)]
        for x in range(M):
            for v in range(V):
                s = 0.0
                for j in range(d):
                    s += u[v][j] * phi[x][j]
                a[x][v] = s * (1 / math.sqrt(d))
    W = [normals(3, u, V) for u in range(V)] if L >= 2 else []
    reward = [[0.0] * K for _ in range(M)]
    for x in range(M):
        for y in range(K):
            tokens = [(y // V ** (L - 1 - t)) % V for t in range(L)]
            tok = 0.0
            pair = 0.0
            for t, v in enumerate(tokens):
                tok += a[x][v]
                if t > 0:
                    pair += W[tokens[t - 1]][v]
            r = tok / L
            if L >= 2:
                r += pairwise_scale * pair / (L - 1)
            reward[x][y] = reward_scale * r
    logits, reward = np.array(logits), np.array(reward)
    lsm = token_log_softmax(logits)
    # log pi_ref(y | x) = sum_t log_softmax(logits[row(x, t, prefix)])[y_t]
    logp = np.zeros((M, K))
    for x in range(M):
        for y in range(K):
            for t in range(L):
                prefix = y // V ** (L - t)
                logp[x, y] += lsm[x * P + offsets[t] + prefix, (y // V ** (L - 1 - t)) % V]
    return logits, reward, logp


def token_log_softmax(logits):
    """log pi_ref(v | x, prefix) per row: z_v - (m + log sum_v exp(z_v - m)), m = max_v z_v (in this order)."""
    out = []
    for z in logits.tolist():
        m = max(z)
        s = 0.0
        for v in z:
            s += math.exp(v - m)
        lse = m + math.log(s)
        out.append([v - lse for v in z])
    return np.array(out)


def toy_draw_response(logp_rows, x, V, L, P, uniforms):
    """A response drawn token by token (an RL rollout, an annotator pair's y): at level t the row of the prefix so
    far, one uniform u, the first token v whose running sum of exp(log pi(v | x, prefix)) exceeds u (the last token
    when none does)."""
    offsets = [sum(V**s for s in range(t)) for t in range(L)]
    node = 0
    for t in range(L):
        row = logp_rows[x * P + offsets[t] + node]
        u = next(uniforms)
        c, v = 0.0, 0
        while v < V - 1:
            c += math.exp(row[v])
            if u < c:
                break
            v += 1
        node = node * V + v
    return node


def toy_rollout(seed, step, logp_rows, M, V, L, G):
    """The G responses per context of training step k: response i = x G + g from Philox(seed; i, step k,
    stream 5), one uniform per token. Returns [(x, y)] in the order of i."""
    P = sum(V**t for t in range(L))
    out = []
    for x in range(M):
        for g in range(G):
            s = Stream(seed, x * G + g, step, ACTION)
            out.append((x, toy_draw_response(logp_rows, x, V, L, P, iter(s.uniform, None))))
    return out


def sigmoid(v):
    if v >= 0:
        return 1 / (1 + math.exp(-v))
    e = math.exp(v)
    return e / (1 + e)


def annotator_pair(seed, i, reward, logp_rows, M, V, L, proposal="reference", label_noise=0.0):
    """Bradley-Terry pair i: Philox(data seed; i, step 0, stream 6), uniforms in this order: the context
    x = min(M-1, floor(u M)); the L tokens of y, then the L tokens of y' (proposal `reference`: token by token from
    pi_ref as `toy_draw_response`; `uniform`: token = min(V-1, floor(u V))); the label: y is chosen iff
    u < P, P = sigmoid(r(x, y) - r(x, y')) (with label noise f: (1 - f) P + f (1 - P)). Returns (x, chosen, rejected)."""
    P_ = sum(V**t for t in range(L))
    s = Stream(seed, i, 0, PREFERENCE_LABEL)
    x = min(M - 1, int(s.uniform() * M))

    def draw():
        if proposal == "reference":
            return toy_draw_response(logp_rows, x, V, L, P_, iter(s.uniform, None))
        node = 0
        for _ in range(L):
            node = node * V + min(V - 1, int(s.uniform() * V))
        return node

    y, y2 = draw(), draw()
    p = sigmoid(reward[x, y] - reward[x, y2])
    if label_noise:
        p = (1 - label_noise) * p + label_noise * (1 - p)
    return (x, y, y2) if s.uniform() < p else (x, y2, y)


def toy_exact_at_reference(reward, logp, beta):
    """Step 0 (policy = pi_ref) of exact/expected_reward = E_x E_ref r and exact/kl_to_optimum =
    E_x KL(pi_ref || pi*) = E_x [log Z(x) - E_ref r / beta], pi* = pi_ref e^(r/beta) / Z."""
    p = np.exp(logp)
    er = (p * reward).sum(1)
    s = logp + reward / beta
    top = s.max(1)
    logZ = top + np.log(np.exp(s - top[:, None]).sum(1))
    return er.mean(), (logZ - er / beta).mean()


# ---------------------------------------------------------------------------------------------------------------
# Worked values (docs/reproducibility.md §7)


def worked_values():
    kat = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
           ((MASK32,) * 4, (MASK32,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
           ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for ctr, key, want in kat:
        got = philox(ctr, key)
        assert got == want, f"Philox KAT failed: {got}"
    print("Philox4x32-10 known-answer vectors (Random123): 3/3 match")

    def hexw(ws):
        return " ".join(f"{w:08x}" for w in ws)

    def floats(xs):
        return "[" + ", ".join(repr(float(v)) for v in xs) + "]"

    g0, g1 = words(7, 0, 0, INITIAL_NOISE), philox((0, 1, 0, INITIAL_NOISE), seed_key(7))
    print(f"seed 7, sample 0, stream 0, step 0: group 0 = {hexw(g0)}, group 1 = {hexw(g1)}")
    print(f"  u(group 0 words) = {floats(uniform(w) for w in g0)}")
    print(f"  x_T (d = 5) = {floats(x_T(7, 0, 5))}")
    print(f"  x_T of sample 1 (d = 2) = {floats(x_T(7, 1, 2))}")
    print(f"  step noise of sample 0, reverse step 0 (stream 1, step 1, d = 2) = {floats(step_noise(7, 0, 0, 2))}")
    big = (1 << 32) + 7
    print(f"seed 2^32 + 7 (key {hexw(seed_key(big))}): group 0 of sample 0, stream 0 = {hexw(words(big, 0, 0, 0))}")
    ring = GMM([[2, 0], [1.414, 1.414], [0, 2], [-1.414, 1.414], [-2, 0], [-1.414, -1.414], [0, -2],
                [1.414, -1.414]], [0.2] * 8)
    k, x = ring.draw(Stream(7, 0, 0, DATA_DRAW))
    print(f"ring, seed 7: exact draw 0 (stream 2, step 0) = component {k}, {floats(x)}")
    x0, t, e = training_row(11, 0, 1, ring, 1000)
    print(f"ddpm-train seed 11, update 1, row 0: x0 = {floats(x0)}, t = {t}, e = {floats(e)}")
    emb = time_embedding(500)
    print(f"temb(500), D = 32, float32: [0] = {float(emb[0])!r}, [1] = {float(emb[1])!r}, "
          f"[15] = {float(emb[15])!r}, [16] = {float(emb[16])!r}, [31] = {float(emb[31])!r}")
    init = mlp_init([34, 16, 16, 2], 11)
    print(f"MLP 34-16-16-2, seed 11: layers.0.weight[0, 0:3] = {floats(init[0][0][0, :3])}, "
          f"layers.0.bias[0] = {float(init[0][1][0])!r}, layers.1.weight[0, 0] = {float(init[1][0][0, 0])!r}")
    logits, reward, logp = toy_lm(4, 3, 2, seed=9)
    print(f"toy LM M 4, V 3, L 2, seed 9 (tabular, scales 1, 1, 0.5): ref.logits row 0 = {floats(logits[0])}")
    print(f"  row 1 (x 0, level 1, node 0) = {floats(logits[1])}")
    print(f"  reward[x 0, y 0..2] = {floats(reward[0, :3])}")
    rows = token_log_softmax(logits)
    pair = annotator_pair(9, 0, reward, rows, 4, 3, 2)
    print(f"  annotator pair 0 (data seed 9, proposal reference): (x, chosen, rejected) = {pair}")
    print(f"  rollout, seed 9, step 1, G = 2: (x, y) = {toy_rollout(9, 1, rows, 4, 3, 2, 2)}")


if __name__ == "__main__":
    worked_values()

#!/usr/bin/env python3
"""NumPy and PyTorch halves of `ops/bench sampling` (issue 4 benchmark; see Sources/tessera-bench/SamplingBench.swift).

Usage: bench_sampling.py DIR THREADS ROUNDS
Reads DIR/sampling_init.safetensors (x_T, target, a_t, timesteps) written by `tessera-bench sampling --export DIR`,
runs the same DDIM(eta=0) chain with the exact score of the Gaussian mixture, vectorised over samples, in float64
(as Tessera computes), and writes DIR/python.json (best-of-ROUNDS seconds per whole chain) and
DIR/python_out.safetensors (final samples, which Tessera compares with its own).

Per step, with a = a_t, a_p = a_prev (1 when prev < 0), v_k = a s_k^2 + 1 - a:
  g = softmax_k(log w_k - (d/2) log v_k - |x - sqrt(a) mu_k|^2 / (2 v_k))
  eps = sqrt(1 - a) sum_k g_k (x - sqrt(a) mu_k) / v_k
  x0 = (x - sqrt(1 - a) eps) / sqrt(a);  x = sqrt(a_p) x0 + sqrt(1 - a_p) eps
"""

import json
import sys
import time

import numpy as np
import torch
from safetensors.numpy import load_file, save_file


def schedule(t):
    ts, prev, ab = t["timesteps"], t["prev_timesteps"], t["alpha_bar"]
    return [(float(ab[a]), float(ab[p]) if p >= 0 else 1.0) for a, p in zip(ts, prev)]


def run_numpy(x, w, mu, s2, steps):
    d = mu.shape[1]
    logw = np.log(w)
    for a, ap in steps:
        v = a * s2 + 1 - a
        diff = x[:, None, :] - np.sqrt(a) * mu[None, :, :]
        logits = logw - 0.5 * d * np.log(v) - np.einsum("nkd,nkd->nk", diff, diff) / (2 * v)
        logits -= logits.max(axis=1, keepdims=True)
        g = np.exp(logits)
        g /= g.sum(axis=1, keepdims=True)
        eps = np.sqrt(1 - a) * np.einsum("nk,nkd->nd", g / v, diff)
        x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
        x = np.sqrt(ap) * x0 + np.sqrt(1 - ap) * eps
    return x


def run_torch(x, w, mu, s2, steps):
    d = mu.shape[1]
    logw = torch.log(w)
    for a, ap in steps:
        v = a * s2 + 1 - a
        diff = x[:, None, :] - (a ** 0.5) * mu[None, :, :]
        logits = logw - 0.5 * d * torch.log(v) - (diff * diff).sum(-1) / (2 * v)
        g = torch.softmax(logits, dim=1)
        eps = (1 - a) ** 0.5 * ((g / v)[:, :, None] * diff).sum(1)
        x0 = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
        x = ap ** 0.5 * x0 + (1 - ap) ** 0.5 * eps
    return x


def best_of(fn, rounds):
    fn()  # warm-up
    best, out = float("inf"), None
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main():
    directory, threads, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    t = load_file(f"{directory}/sampling_init.safetensors")
    steps = schedule(t)
    x_T, w, mu, s = t["x_T"], t["target.weights"], t["target.means"], t["target.stds"]
    s2 = s * s
    np_seconds, np_out = best_of(lambda: run_numpy(x_T.copy(), w, mu, s2, steps), rounds)
    print(f"numpy {np.__version__}: {np_seconds:.3f} s", file=sys.stderr)
    torch.set_num_threads(threads)
    tx, tw, tmu, ts2 = (torch.from_numpy(a.copy()) for a in (x_T, w, mu, s2))
    with torch.no_grad():
        torch_seconds, torch_out = best_of(lambda: run_torch(tx.clone(), tw, tmu, ts2, steps), rounds)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads): {torch_seconds:.3f} s", file=sys.stderr)
    # Also one thread: on a busy 2-core box OpenMP's barriers can make 2 threads slower than 1; the comparison is
    # against PyTorch's better figure.
    torch.set_num_threads(1)
    with torch.no_grad():
        torch1_seconds, torch1_out = best_of(lambda: run_torch(tx.clone(), tw, tmu, ts2, steps), rounds)
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__} (1 thread): {torch1_seconds:.3f} s", file=sys.stderr)
    json.dump({"results": [
        {"name": "numpy", "label": f"NumPy {np.__version__} (vectorised)", "threads": "1 (NumPy ufuncs)",
         "seconds": np_seconds},
        {"name": "torch", "label": f"PyTorch {torch.__version__} CPU eager", "threads": str(torch.get_num_threads()),
         "seconds": torch_seconds},
        {"name": "torch1", "label": f"PyTorch {torch.__version__} CPU eager", "threads": "1", "seconds": torch1_seconds},
    ]}, open(f"{directory}/python.json", "w"), indent=1)
    save_file({"numpy": np.ascontiguousarray(np_out), "torch": torch_out.numpy().copy(), "torch1": torch1_out.numpy().copy()},
              f"{directory}/python_out.safetensors")


if __name__ == "__main__":
    main()

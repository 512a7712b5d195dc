#!/usr/bin/env python3
"""Cross-implementation parity: Tessera's DDPM/DDIM sampler against Hugging Face diffusers' schedulers.

Issue 4 "Parity with the reference implementation", WORKLOADS.md §6 "Sampling parity". This script is the
generator of the committed fixture Tests/TesseraWorkloadsTests/Fixtures/parity/diffusers_parity.safetensors; the
Swift test DiffusersParityTests compares Tessera against it, so CI needs no PyTorch.

What it does:
  1. reads DIR/parity_inputs.safetensors written by `tessera-bench parity export DIR`: the 8-mode ring, Tessera's
     x_T for 32 samples (Philox stream 0) and, for every stochastic case, Tessera's per-step noise (Philox stream 1);
  2. builds the exact noise prediction of the noised Gaussian mixture in torch (float64), written here from the
     formula (WORKLOADS.md §0), not taken from Tessera:
        eps*(x, t) = sqrt(1 - a_t) sum_k g_k(x) (x - sqrt(a_t) mu_k) / v_k,  v_k = a_t s_k^2 + 1 - a_t,
        g = softmax_k(log w_k - (d/2) log v_k - |x - sqrt(a_t) mu_k|^2 / (2 v_k)),
     with a_t the float64 cumulative product of the linear betas;
  3. runs diffusers' DDIMScheduler (clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading") and
     DDPMScheduler (clip_sample=False, variance_type="fixed_small", leading) from that x_T, looping
     `scheduler.step(eps, t, x, ...)`. Injected noise: DDIM takes it through step(..., variance_noise=z_k); DDPM draws
     it with diffusers.schedulers.scheduling_ddpm.randn_tensor, which is replaced for the loop by a function that
     returns z_k (the exported noise of that step);
  4. writes the fixture: the inputs again (x_T, noise.*, target.*), diffusers' outputs `diffusers.<case>` [N, d]
     float64, diffusers' timesteps `diffusers.timesteps.<case>`, and `diffusers.eps_t500` (the model at t = 500 on
     x_T, to localise a disagreement), with versions in the metadata.
It prints the largest relative difference to Tessera's own outputs from the export, as a first check.

Regenerate (any machine; the venv is gitignored):
    python3 -m venv ops/.venv-parity
    ops/.venv-parity/bin/pip install torch diffusers safetensors numpy      # CPU torch is enough
    swift build -c release --product tessera-bench
    .build/release/tessera-bench parity export /tmp/parity
    ops/.venv-parity/bin/python ops/parity/diffusers_parity.py /tmp/parity \\
        Tests/TesseraWorkloadsTests/Fixtures/parity/diffusers_parity.safetensors
    swift test --filter DiffusersParityTests
"""

import json
import sys

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

import diffusers
import diffusers.schedulers.scheduling_ddpm as ddpm_module
from diffusers import DDIMScheduler, DDPMScheduler


def exact_eps_model(weights, means, stds, alpha_bar):
    """eps*(x, t) of the noised mixture, float64 torch; x is [N, d], t an int timestep."""
    w = torch.tensor(weights, dtype=torch.float64)
    mu = torch.tensor(means, dtype=torch.float64)  # [K, d]
    s2 = torch.tensor(stds, dtype=torch.float64) ** 2
    d = mu.shape[1]

    def eps(x, t):
        a = torch.tensor(float(alpha_bar[int(t)]), dtype=torch.float64)
        v = a * s2 + 1 - a  # [K]
        diff = x[:, None, :] - a.sqrt() * mu[None, :, :]  # [N, K, d]
        logits = torch.log(w) - 0.5 * d * torch.log(v) - (diff**2).sum(-1) / (2 * v)  # [N, K]
        g = torch.softmax(logits, dim=1)
        return (1 - a).sqrt() * ((g / v)[:, :, None] * diff).sum(1)

    return eps


def run_case(case, x_T, noise, eps, beta_start, beta_end, T):
    steps = case["steps"]
    if case["scheduler"] == "ddim":
        sched = DDIMScheduler(
            num_train_timesteps=T, beta_start=beta_start, beta_end=beta_end, beta_schedule="linear",
            clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading",
            prediction_type="epsilon")
    else:
        sched = DDPMScheduler(
            num_train_timesteps=T, beta_start=beta_start, beta_end=beta_end, beta_schedule="linear",
            clip_sample=False, variance_type="fixed_small", timestep_spacing="leading", prediction_type="epsilon")
    sched.set_timesteps(steps)
    x = torch.from_numpy(x_T.copy())
    original_randn = ddpm_module.randn_tensor
    try:
        for k, t in enumerate(sched.timesteps):
            model_output = eps(x, t)
            z = torch.from_numpy(noise[k].copy()) if noise is not None else None
            if case["scheduler"] == "ddim":
                if case["eta"] > 0:
                    x = sched.step(model_output, t, x, eta=case["eta"], variance_noise=z).prev_sample
                else:
                    x = sched.step(model_output, t, x, eta=0.0).prev_sample
            else:
                def injected(shape, generator=None, device=None, dtype=None, layout=None, _z=z):
                    assert tuple(shape) == tuple(_z.shape), (shape, _z.shape)
                    return _z.to(dtype=dtype)
                ddpm_module.randn_tensor = injected
                x = sched.step(model_output, t, x).prev_sample
    finally:
        ddpm_module.randn_tensor = original_randn
    return x.numpy().astype(np.float64), sched.timesteps.numpy().astype(np.int64)


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    inputs_dir, out_path = sys.argv[1], sys.argv[2]
    path = f"{inputs_dir}/parity_inputs.safetensors"
    tensors = load_file(path)
    from safetensors import safe_open
    with safe_open(path, "np") as f:
        meta = f.metadata()
    cases = json.loads(meta["cases"])
    beta_start, beta_end, T = float(meta["beta_start"]), float(meta["beta_end"]), int(meta["train_steps"])
    betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    alpha_bar = np.cumprod(1.0 - betas)
    weights, means, stds = tensors["target.weights"], tensors["target.means"], tensors["target.stds"]
    eps = exact_eps_model(weights, means, stds, alpha_bar)
    x_T = tensors["x_T"]

    out = {"x_T": x_T, "target.weights": weights, "target.means": means, "target.stds": stds}
    out["diffusers.eps_t500"] = eps(torch.from_numpy(x_T.copy()), 500).numpy()
    worst = 0.0
    for case in cases:
        name = case["name"]
        noise = tensors.get(f"noise.{name}")
        if noise is not None:
            out[f"noise.{name}"] = noise
        result, timesteps = run_case(case, x_T, noise, eps, beta_start, beta_end, T)
        out[f"diffusers.{name}"] = result
        out[f"diffusers.timesteps.{name}"] = timesteps
        ours = tensors[f"tessera.{name}"]
        rel = np.linalg.norm(ours - result, axis=1) / np.maximum(np.linalg.norm(result, axis=1), 1e-12)
        worst = max(worst, float(rel.max()))
        same_t = np.array_equal(timesteps, tensors[f"tessera.timesteps.{name}"])
        print(f"{name:18s} max relative |tessera - diffusers| = {rel.max():.2e}; timesteps equal: {same_t}")
    save_file(out, out_path, metadata={
        "format": "tessera.parity.diffusers/1",
        "generator": "ops/parity/diffusers_parity.py",
        "diffusers": diffusers.__version__, "torch": torch.__version__, "numpy": np.__version__,
        "seed": meta["seed"], "samples": meta["samples"], "beta_start": meta["beta_start"],
        "beta_end": meta["beta_end"], "train_steps": meta["train_steps"], "cases": meta["cases"],
    })
    print(f"wrote {out_path} (diffusers {diffusers.__version__}, torch {torch.__version__}); worst {worst:.2e}")


if __name__ == "__main__":
    main()

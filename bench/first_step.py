"""First-step (JIT) time and steady steps of the fused model on a GPU, per preset:
``python bench/first_step.py``. A step that compiles a kernel again mid-run (a new variant for a
new seed or length) shows as a slow step after the first; the compiled-variant count of every
kernel is printed after step 1 and after the last step."""

from __future__ import annotations

import time

import torch

from cmath_fast import CMATH, CMATHConfig
from cmath_fast.bench.shapes import R1_LENGTHS, R2_LENGTHS
from cmath_fast.step import train_step
from cmath_fast.testing import random_batch


def _variants():
    from cmath_fast.kernels import cross_modal_attention as cma
    from cmath_fast.kernels import variational_fusion as vf
    total = 0
    for module in (cma, vf):
        for name in dir(module):
            k = getattr(module, name)
            caches = getattr(k, "device_caches", None)
            if name.endswith("_kernel") and caches is not None:
                total += sum(len(entry[0]) for entry in caches.values())
    return total


def main(steps: int = 8):
    for preset, lengths in (("iemocap", R1_LENGTHS), ("meld", R2_LENGTHS)):
        cfg = CMATHConfig.preset(preset, dropout=0.1)
        torch.manual_seed(0)
        model = CMATH(cfg, backend="triton").cuda().train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-5)
        gen = torch.Generator().manual_seed(0)
        times, variants = [], []
        for i in range(steps):
            # a fresh batch of the same lengths, shuffled: seeds and data change every step
            order = torch.randperm(len(lengths), generator=gen).tolist()
            batch = random_batch(cfg, [lengths[j] for j in order], gen, "cuda")
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            train_step(model, opt, batch[:5], batch[5], epoch=1, precision="bf16-mixed")
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            variants.append(_variants())
        print(f"{preset} (d {cfg.d_model}, bf16-mixed, batch of {len(lengths)}): first step {times[0]:.2f} s; "
              f"then {', '.join(f'{t * 1e3:.1f}' for t in times[1:])} ms; compiled kernel variants after "
              f"step 1: {variants[0]}, after step {steps}: {variants[-1]}")


if __name__ == "__main__":
    main()

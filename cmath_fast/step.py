"""One training step — forward, loss, backward, optimiser — shared by the trainer, the benchmarks
and the device-op counter (none of them keeps a copy)."""

from __future__ import annotations

from typing import Optional

import torch

from .profiling import nvtx_range


def train_step(model, opt: torch.optim.Optimizer, inputs, labels: torch.Tensor, epoch: Optional[int],
               max_grad_norm: float = 0.0, skip_nonfinite: bool = False):
    """forward, loss, backward, (clip the gradient norm when ``max_grad_norm``), optimiser step,
    with NVTX ranges. ``inputs``: (text, audio, visual, speakers, lengths). Returns (total loss,
    dict of loss terms), both detached tensors on the model's device (no host sync).
    ``skip_nonfinite``: a step whose loss is NaN or inf leaves the weights and the optimiser
    untouched (this reads the loss on the host: one sync)."""
    out = model(*inputs)
    total, terms = model.loss(out, labels, epoch=epoch)
    opt.zero_grad(set_to_none=True)
    with nvtx_range("backward", "bwd"):
        total.backward()
    if skip_nonfinite and not bool(torch.isfinite(total)):
        opt.zero_grad(set_to_none=True)
        return total.detach(), terms
    with nvtx_range("optimizer", "step"):
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
    return total.detach(), terms

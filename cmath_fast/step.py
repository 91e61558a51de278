"""One training step — forward, loss, backward, optimiser — shared by the trainer, the benchmarks
and the device-op counter (none of them keeps a copy); and the precision modes it runs in."""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from .profiling import nvtx_range

# fp32: everything in fp32. bf16-mixed / fp16-mixed: torch.autocast around forward and loss, fp32
# master weights (fp16 with a gradient scaler). bf16: weights and activations in bf16.
PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed", "bf16")


def default_precision(device: str) -> str:
    """What ``--precision auto`` picks (``backend.device_rules``): bf16-mixed on a GPU with native
    bf16, fp16-mixed on one without (below compute capability 8.0), fp32 on the CPU."""
    from .backend import device_rules
    return device_rules(device).precision


def check_precision(precision: str, device=None) -> None:
    """A known mode, and (given a device) one the device runs natively."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision: expected one of {PRECISIONS}, got {precision!r}")
    if device is not None:
        from .backend import check_device_precision
        check_device_precision(precision, device)


def autocast_context(precision: str, device_type: str, cache: bool = True):
    """The autocast context of a precision mode (a null context for fp32 and bf16). ``cache``:
    autocast's cache of cast weights (off inside CUDA graphs, whose captures must not keep casts
    made outside them)."""
    if precision == "bf16-mixed":
        return torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=cache)
    if precision == "fp16-mixed":
        return torch.autocast(device_type, dtype=torch.float16, cache_enabled=cache)
    return contextlib.nullcontext()


def weight_dtype(precision: str) -> torch.dtype:
    """The dtype of the weights (and of the features fed to the model) in a precision mode."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def make_grad_scaler(precision: str, device_type: str):
    """A gradient scaler for fp16-mixed, None otherwise."""
    if precision != "fp16-mixed":
        return None
    try:
        return torch.amp.GradScaler(device_type)
    except (AttributeError, TypeError):  # torch < 2.3
        return torch.cuda.amp.GradScaler()


def train_step(model, opt: torch.optim.Optimizer, inputs, labels: torch.Tensor, epoch: Optional[int],
               max_grad_norm: float = 0.0, skip_nonfinite: bool = False, precision: str = "fp32",
               scaler=None, beta: Optional[torch.Tensor] = None, autocast_cache: bool = True, rows=None,
               loss_scale=None):
    """forward, loss, backward, (clip the gradient norm when ``max_grad_norm``), optimiser step,
    with NVTX ranges. ``inputs``: (text, audio, visual, speakers, lengths), features already in
    ``weight_dtype(precision)``. Returns (total loss, dict of loss terms), both detached tensors on
    the model's device (no host sync). ``skip_nonfinite``: a step whose loss is NaN or inf leaves
    the weights and the optimiser untouched (this reads the loss on the host: one sync).
    ``scaler``: the gradient scaler of fp16-mixed. ``beta``: the KL weight as a device tensor
    (what a captured step reads; see ``cmath_fast.graphs``), else the schedule's at ``epoch``.
    ``rows``: the batch's packed layout (``Batch.with_rows``), for a model that packs rows.
    ``model`` may be wrapped in DistributedDataParallel; ``loss_scale`` (s_w, s_n): the factors of
    ``distributed.loss_scales`` on the class-weighted cross-entropies and on the other terms (the
    returned total is the scaled one, the terms are the rank's own)."""
    from .distributed import unwrap
    core = unwrap(model)
    with autocast_context(precision, inputs[0].device.type, autocast_cache):
        out = model(*inputs) if rows is None else model(*inputs, rows=rows)
        total, terms = core.loss(out, labels, epoch=epoch, **({} if beta is None else {"beta": beta}))
        if loss_scale is not None:
            s_w, s_n = loss_scale
            total = total * s_n
            if s_w != s_n:  # the class-weighted part to its own global denominator
                from .losses import weighted_ce
                total = total + (s_w - s_n) * weighted_ce(core.cfg, out, labels, core.class_weights)
    opt.zero_grad(set_to_none=True)
    with nvtx_range("backward", "bwd"):
        (scaler.scale(total) if scaler is not None else total).backward()
    if skip_nonfinite and not bool(torch.isfinite(total)):
        opt.zero_grad(set_to_none=True)
        return total.detach(), terms
    with nvtx_range("optimizer", "step"):
        if scaler is not None:
            scaler.unscale_(opt)
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
    return total.detach(), terms

"""The reconstruction U-Nets' ends for the three modalities at once (Triton; see
``kernels.reconstruction``): ``standardise_rows`` — the input standardisation and the gather of
packed rows in one launch — and ``reconstruction_loss`` — L_rec from the partial sums that the
last convolution (``row_conv_groups(..., ref=)``) wrote, one launch each way."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..profiling import nvtx_range
from ._common import check_device, float_promotion
from ._library import op


class StandardiseFunction(torch.autograd.Function):
    """(G, N, C_X) standardised rows; a gradient for features that require one (rare: saliency),
    scattered back in torch."""

    @staticmethod
    def forward(ctx, src, pos, lens, out_dtype, n_groups, *tensors):
        xs, means, stds = tensors[:n_groups], tensors[n_groups:2 * n_groups], tensors[2 * n_groups:]
        ctx.save_for_backward(src, pos, lens, *stds)
        ctx.shapes = [x.shape for x in xs]
        return op("standardise")(list(xs), list(means), list(stds), src, pos, lens, out_dtype)

    @staticmethod
    def backward(ctx, dy):
        src, pos, lens, *stds = ctx.saved_tensors
        need = ctx.needs_input_grad[5:5 + len(stds)]
        valid = (pos < lens)[:, None]
        grads = []
        for g, (shape, std) in enumerate(zip(ctx.shapes, stds)):
            if not need[g]:
                grads.append(None)
                continue
            d = torch.where(valid, dy[g, :, :shape[1]] / std, 0.0)
            full = d.new_zeros(shape)
            grads.append(full.index_add_(0, src, d) if src is not None else d.reshape(shape))
        return (None,) * 5 + tuple(grads) + (None,) * (2 * len(stds))


def standardise_rows(xs: Sequence[torch.Tensor], means: Sequence[torch.Tensor], stds: Sequence[torch.Tensor],
                     pos: torch.Tensor, lens: torch.Tensor, src: Optional[torch.Tensor] = None) -> torch.Tensor:
    """xs: G <= 3 feature tensors (rows, D_g); means, stds: (D_g,) each; pos, lens (N,) int32 the
    rows' positions and dialogue lengths; src (N,) int64: the row of each x_g that output row r
    reads (packed rows; the identity when None) -> (G, N, C_X), C_X the widest D_g rounded up to a
    multiple of 16: (x - mean) / std on valid rows, zero on padding rows and past each group's D_g,
    in the dtypes' promotion."""
    check_device("x", xs[0])
    xs = [x if x.stride(-1) == 1 else x.contiguous() for x in xs]
    out_dtype = float_promotion(xs[0].dtype, means[0].dtype)
    for name, group in (("mean", means), ("std", stds)):
        for x, t in zip(xs, group):
            if t.shape != (x.shape[-1],):
                raise ValueError(f"{name}: expected ({x.shape[-1]},), got {tuple(t.shape)}")
    if src is not None and src.shape != pos.shape:
        raise ValueError(f"src: expected {tuple(pos.shape)} (one per row), got {tuple(src.shape)}")
    with nvtx_range("op/standardise"):
        return StandardiseFunction.apply(src, pos, lens, out_dtype, len(xs), *xs, *means, *stds)


class ReconstructionLossFunction(torch.autograd.Function):
    """L_rec from the partial sums; its gradient to x_hat."""

    @staticmethod
    def forward(ctx, x_hat, ref, part, pos, lens, dims):
        rec, nv = op("rec_total")(part, pos, lens)
        ctx.save_for_backward(x_hat, ref, nv, pos, lens)
        ctx.dims = dims
        return rec

    @staticmethod
    def backward(ctx, grec):
        x_hat, ref, nv, pos, lens = ctx.saved_tensors
        with nvtx_range("op/reconstruction_loss", "bwd"):
            dx = op("rec_bwd")(x_hat, ref, grec.float().contiguous(), nv, pos, lens, list(ctx.dims))
        return dx, None, None, None, None, None


def reconstruction_loss(x_hat: torch.Tensor, ref: torch.Tensor, part: torch.Tensor, pos: torch.Tensor,
                        lens: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """sum_g sum over valid rows of |x_hat_g - ref_g|^2 / (n D_g), n the valid rows: x_hat (G, N,
    C_Y) the U-Nets' reconstructions, ref (G, N, C_R) the standardised inputs, ``part`` the partial
    sums ``row_conv_groups(..., ref=ref)`` returned with x_hat, dims the D_g. A () fp32 tensor."""
    if len(dims) != x_hat.shape[0]:
        raise ValueError(f"dims: one per group ({x_hat.shape[0]}), got {list(dims)}")
    with nvtx_range("op/reconstruction_loss"):
        return ReconstructionLossFunction.apply(x_hat, ref, part, pos, lens, tuple(int(d) for d in dims))

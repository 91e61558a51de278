"""The fused kernels as PyTorch custom operators: ``torch.ops.cmath_fast.<name>``.

Each operator is defined with a schema (``Library.define``), implemented once for every device
(``CompositeExplicitAutograd``: the launchers of ``cmath_fast.kernels``, on CUDA or under Triton's
CPU interpreter) and given a fake implementation (``register_fake``) that computes only shapes and
dtypes, so that torch.compile and torch.export trace through them without running a kernel.
Autograd stays in the autograd.Functions of ``cmath_fast.ops`` around these operators: that costs
one Python call per op, where ``torch.library.custom_op`` with ``register_autograd`` costs tens of
microseconds more on the host per call (measured in the README).

Operators (optional outputs that were not asked for come back as empty tensors):
    cma_fwd(q, k, v, gates?, q_len, kv_len, seed, sm_scale, dropout_p, joint, store_ungated, starts?, max_len)
        -> (out (B, Lq, S, H, dh), out_ungated or empty, lse (B, S, H, Lq) fp32); with ``starts``
        (packed rows) q (N, H, dh), k, v (S, N, H, dh), out (N, S, H, dh), Lq = max_len
    cma_bwd(dout, q, k, v, out, out_u, lse, gates?, q_len, kv_len, seed, sm_scale, dropout_p, joint, starts?,
            max_len)
        -> (dq, dkv (S, B, Lk, 2, H, dh): dk and dv packed, dgates fp32 or empty)
    vf_fwd(e, weight, bias?, eps?, row_mask?, seed, training, logvar_clamp, return_eps, save_h)
        -> (z, kl (N,) fp32, [mu | logvar_raw] (N, 2 d_z) fp32 or empty, drawn noise or empty)
    vf_bwd(h, dz?, dkl?, eps?, row_mask?, seed, training, logvar_clamp, out_dtype) -> d[mu | lv]
    poe_fwd(mu, logvar, eps?, row_mask?, seed, training, logvar_clamp, return_eps)
        -> (z, kl (N,) fp32, drawn noise or empty)
    poe_bwd(mu, logvar, dz?, dkl?, eps?, row_mask?, seed, training, logvar_clamp) -> (dmu, dlogvar)
    row_conv_fwd(x (G, N, C_X), xb?, weight[], bias[]?, pos, len, pad, act, save_pre, ref?)
        -> (y (G, N, C_Y), pre or empty, reconstruction partial sums fp32 or empty)
    row_conv_bwd(dy, x, xb?, weight[], pre, pos, len, pad, act, has_bias, need_dx)
        -> (dx or empty, dxb or empty, dW fp32 flat, db fp32 flat or empty)
    row_conv_taps(weight[] (CO_g, CI_g, K), dtype) -> (K, CI_g, CO_g rounded up to 16) each, zero-padded
    standardise(x[], mean[], std[], src?, pos, len, out_dtype) -> (G, N, max D_g) standardised rows
    rec_total(part, pos, len) -> (L_rec () fp32, valid rows () fp32)
    rec_bwd(x_hat, ref, grec, nv, pos, len, dims) -> d x_hat
    layer_norm_fwd(x (C, R, D), w (C, D), b, eps, out_dtype) -> (y, mean (C, R) fp32, rstd (C, R) fp32)
    layer_norm_bwd(dy, x, w, mean, rstd) -> (dx, dw fp32, db fp32)
    loss_fwd(z, f, fine, kl?, rec?, coarse, y, valid, cw?, beta?, beta_value, tau, kd_scale, g_fine, g_kd, g_feat,
             l_rec) -> (total () fp32, terms (10,) fp32)
    loss_bwd(dtotal, z, f, fine, coarse, y, valid, cw?, terms, tau, kd_scale, g_fine, g_kd, g_feat, l_rec,
             teacher_grad, need_fine, need_kl, need_rec) -> (dz, df, dfine, dkl, drec)
``seed`` is a (1,) int64 tensor on the op's device, drawn from torch's generator for that device
and read by the kernels through a pointer: it never crosses to the host, so a captured CUDA graph
draws fresh masks and noise on every replay.
"""

from __future__ import annotations

from typing import Tuple

import torch

NAMESPACE = "cmath_fast"


def library_status() -> Tuple[bool, str]:
    """(registered, reason): torch >= 2.4 has ``torch.library.register_fake``."""
    if not hasattr(torch.library, "register_fake"):
        return False, (f"torch {torch.__version__} has no torch.library.register_fake (needs >= 2.4): the "
                       f"fused ops run eagerly, but torch.compile cannot trace them")
    return True, "custom operators torch.ops.cmath_fast.* registered"


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty((0,))


def _dense(*ts):
    """The kernels address these tensors from their shapes: make sure they are contiguous here, at
    run time. (Under torch.compile the real tensors an operator receives may be laid out otherwise
    than the fake ones its wrapper saw, so a ``.contiguous()`` before the call is not enough.)"""
    return tuple(t.contiguous() if t is not None and not t.is_contiguous() else t for t in ts)


def _last_dim_dense(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _taps_dense(w):
    """A tap-major weight (K, C_in, C_out) whose rows may be padded (``ops.row_conv.tap_major``):
    kept as it is when its rows are evenly strided, else made contiguous."""
    return w if w.stride(2) == 1 and w.stride(0) == w.shape[1] * w.stride(1) else w.contiguous()


# ------------------------------------------------------------------------------ implementations
def _cma_fwd(q, k, v, gates, q_len, kv_len, seed, sm_scale, dropout_p, joint, store_ungated, starts=None,
             max_len=0):
    from ..kernels.cross_modal_attention import cross_modal_attention_fwd
    q, (gates,) = _last_dim_dense(q), _dense(gates)
    if k.stride() != v.stride() or k.stride(-1) != 1:
        k, v = k.contiguous(), v.contiguous()
    out, out_u, lse = cross_modal_attention_fwd(q, k, v, q_len, kv_len, gates, sm_scale, dropout_p, seed,
                                                joint, store_ungated, starts=starts, max_len=max_len)
    return out, (out_u if out_u is not None else _empty(q)), lse


def _cma_fwd_fake(q, k, v, gates, q_len, kv_len, seed, sm_scale, dropout_p, joint, store_ungated, starts=None,
                  max_len=0):
    H, dh = q.shape[-2:]
    S = k.shape[0]
    rows = tuple(q.shape[:-2])  # (B, Lq), or (N,) for packed rows
    B, Lq = (starts.shape[0] - 1, max_len) if starts is not None else rows
    out = q.new_empty(rows + (S, H, dh))
    out_u = q.new_empty(rows + (S, H, dh)) if (gates is not None and store_ungated) else _empty(q)
    return out, out_u, q.new_empty((B, S, H, Lq), dtype=torch.float32)


def _cma_bwd(dout, q, k, v, out, out_u, lse, gates, q_len, kv_len, seed, sm_scale, dropout_p, joint,
             starts=None, max_len=0):
    from ..kernels.cross_modal_attention import cross_modal_attention_bwd
    q = _last_dim_dense(q)
    out, out_u, lse, gates = _dense(out, out_u, lse, gates)
    if k.stride() != v.stride() or k.stride(-1) != 1:
        k, v = k.contiguous(), v.contiguous()
    dkv = k.new_empty(tuple(k.shape[:-2]) + (2,) + tuple(k.shape[-2:]))
    dq, _, _, dg = cross_modal_attention_bwd(
        dout, q, k, v, out, out_u if out_u.numel() else None, lse, gates, q_len, kv_len, sm_scale,
        dropout_p, seed, joint, dk=dkv.select(-3, 0), dv=dkv.select(-3, 1), starts=starts, max_len=max_len)
    return dq, dkv, (dg if dg is not None else _empty(lse))


def _cma_bwd_fake(dout, q, k, v, out, out_u, lse, gates, q_len, kv_len, seed, sm_scale, dropout_p, joint,
                  starts=None, max_len=0):
    dg = q.new_empty(tuple(gates.shape), dtype=torch.float32) if gates is not None else _empty(lse)
    return q.new_empty(tuple(q.shape)), k.new_empty(tuple(k.shape[:-2]) + (2,) + tuple(k.shape[-2:])), dg


def _vf_fwd(e, weight, bias, eps, row_mask, seed, training, logvar_clamp, return_eps, save_h):
    from ..kernels.variational_fusion import variational_fusion_fwd
    e, weight = _last_dim_dense(e), _last_dim_dense(weight)
    bias, eps, row_mask = _dense(bias, eps, row_mask)
    z, kl, h, drawn = variational_fusion_fwd(e, weight, bias, eps, row_mask, training, logvar_clamp,
                                             seed, return_eps, save_h)
    # two distinct empties: outputs of a custom operator must not alias each other
    return (z, kl, h if h is not None else e.new_empty((0,), dtype=torch.float32),
            drawn if drawn is not None else e.new_empty((0,), dtype=torch.float32))


def _vf_fwd_fake(e, weight, bias, eps, row_mask, seed, training, logvar_clamp, return_eps, save_h):
    N, d_z = e.shape[0], weight.shape[0] // 2
    f32 = dict(dtype=torch.float32)
    h = e.new_empty((N, 2 * d_z), **f32) if save_h else e.new_empty((0,), **f32)
    drawn = e.new_empty((N, d_z), **f32) if (training and eps is None and return_eps) else e.new_empty((0,), **f32)
    return e.new_empty((N, d_z)), e.new_empty((N,), **f32), h, drawn


def _vf_bwd(h, dz, dkl, eps, row_mask, seed, training, logvar_clamp, out_dtype):
    from ..kernels.variational_fusion import variational_fusion_bwd_dh
    h, dz, dkl, eps, row_mask = _dense(h, dz, dkl, eps, row_mask)
    return variational_fusion_bwd_dh(h, dz, dkl, eps, row_mask, training, logvar_clamp, seed, out_dtype)


def _vf_bwd_fake(h, dz, dkl, eps, row_mask, seed, training, logvar_clamp, out_dtype):
    return h.new_empty(tuple(h.shape), dtype=out_dtype)


def _poe_fwd(mu, logvar, eps, row_mask, seed, training, logvar_clamp, return_eps):
    from ..kernels.variational_fusion import poe_fusion_fwd
    mu, logvar, eps, row_mask = _dense(mu, logvar, eps, row_mask)
    z, kl, drawn = poe_fusion_fwd(mu, logvar, eps, row_mask, training, logvar_clamp, seed, return_eps)
    return z, kl, (drawn if drawn is not None else mu.new_empty((0,), dtype=torch.float32))


def _poe_fwd_fake(mu, logvar, eps, row_mask, seed, training, logvar_clamp, return_eps):
    M, N, d_z = mu.shape
    f32 = dict(dtype=torch.float32)
    drawn = mu.new_empty((N, d_z), **f32) if (training and eps is None and return_eps) else mu.new_empty((0,), **f32)
    return mu.new_empty((N, d_z)), mu.new_empty((N,), **f32), drawn


def _poe_bwd(mu, logvar, dz, dkl, eps, row_mask, seed, training, logvar_clamp):
    from ..kernels.variational_fusion import poe_fusion_bwd
    mu, logvar, dz, dkl, eps, row_mask = _dense(mu, logvar, dz, dkl, eps, row_mask)
    return poe_fusion_bwd(mu, logvar, dz, dkl, eps, row_mask, training, logvar_clamp, seed)


def _poe_bwd_fake(mu, logvar, dz, dkl, eps, row_mask, seed, training, logvar_clamp):
    return mu.new_empty(tuple(mu.shape)), logvar.new_empty(tuple(logvar.shape))


def _row_conv_fwd(x, xb, weight, bias, pos, lens, pad, act, save_pre, ref=None):
    from ..kernels.row_conv import row_conv_fwd
    if x.stride(-1) != 1:
        x = x.contiguous()
    if xb is not None and xb.stride(-1) != 1:
        xb = xb.contiguous()
    pos, lens, ref = _dense(pos, lens, ref)
    weight = [_taps_dense(w) for w in weight]  # padded tap-major rows are read by their stride
    bias = list(_dense(*bias)) if bias is not None else None
    y, pre, part = row_conv_fwd(x, xb, weight, bias, pos, lens, pad, act, save_pre, ref)
    f32 = dict(dtype=torch.float32)
    return y, (pre if pre is not None else _empty(x)), (part if part is not None else x.new_empty((0,), **f32))


def _row_conv_fwd_fake(x, xb, weight, bias, pos, lens, pad, act, save_pre, ref=None):
    import triton
    from ..kernels.configs import row_conv_tile
    from ..kernels.row_conv import padded_width
    G, N = x.shape[0], x.shape[1]
    shape = (G, N, padded_width([w.shape[2] for w in weight]))  # tap-major weights (K, C_in, C_out)
    f32 = dict(dtype=torch.float32)
    if ref is not None:
        tile = row_conv_tile("fwd", x.dtype)
        part = x.new_empty((G, triton.cdiv(N, tile.block_m), triton.cdiv(shape[2], tile.block_n)), **f32)
    else:
        part = x.new_empty((0,), **f32)
    return x.new_empty(shape), (x.new_empty(shape) if (save_pre and act) else _empty(x)), part


def _row_conv_bwd(dy, x, xb, weight, pre, pos, lens, pad, act, has_bias, need_dx):
    from ..kernels.row_conv import row_conv_bwd
    if x.stride(-1) != 1:
        x = x.contiguous()
    if xb is not None and xb.stride(-1) != 1:
        xb = xb.contiguous()
    dy, pre, pos, lens = _dense(dy, pre, pos, lens)
    weight = [_taps_dense(w) for w in weight]
    dx, dxb, dw, db = row_conv_bwd(dy, x, xb, weight, pre if pre.numel() else None, pos, lens, pad, act, has_bias,
                                   need_dx)
    f32 = dict(dtype=torch.float32)
    return (dx if dx is not None else _empty(x), dxb if dxb is not None else _empty(x), dw,
            db if db is not None else x.new_empty((0,), **f32))


def _row_conv_bwd_fake(dy, x, xb, weight, pre, pos, lens, pad, act, has_bias, need_dx):
    f32 = dict(dtype=torch.float32)
    c_b = xb.shape[-1] if xb is not None else 0
    n_w = sum(w.numel() for w in weight)  # tap-major weights (K, C_in, C_out)
    return (x.new_empty(tuple(x.shape)) if need_dx else _empty(x),
            x.new_empty((x.shape[0], x.shape[1], c_b)) if (need_dx and xb is not None) else _empty(x),
            x.new_empty((n_w,), **f32),
            x.new_empty((sum(w.shape[2] for w in weight),) if has_bias else (0,), **f32))


def _standardise(x, mean, std, src, pos, lens, out_dtype):
    from ..kernels.reconstruction import standardise_fwd
    x = [t if t.stride(-1) == 1 else t.contiguous() for t in x]
    mean, std = list(_dense(*mean)), list(_dense(*std))
    src, pos, lens = _dense(src, pos, lens)
    return standardise_fwd(x, mean, std, src, pos, lens, out_dtype)


def _standardise_fake(x, mean, std, src, pos, lens, out_dtype):
    from ..kernels.reconstruction import padded_width
    N = src.shape[0] if src is not None else x[0].shape[0]
    return x[0].new_empty((len(x), N, padded_width([t.shape[1] for t in x])), dtype=out_dtype)


def _rec_total(part, pos, lens):
    from ..kernels.reconstruction import rec_total
    part, pos, lens = _dense(part, pos, lens)
    return rec_total(part, pos, lens)


def _rec_total_fake(part, pos, lens):
    return part.new_empty((), dtype=torch.float32), part.new_empty((), dtype=torch.float32)


def _rec_bwd(x_hat, ref, grec, nv, pos, lens, dims):
    from ..kernels.reconstruction import rec_bwd
    x_hat, ref, grec, nv, pos, lens = _dense(x_hat, ref, grec, nv, pos, lens)
    return rec_bwd(x_hat, ref, grec, nv, pos, lens, dims)


def _rec_bwd_fake(x_hat, ref, grec, nv, pos, lens, dims):
    return x_hat.new_empty(tuple(x_hat.shape))


def _layer_norm_fwd(x, w, b, eps, out_dtype):
    from ..kernels.layer_norm import layer_norm_fwd
    return layer_norm_fwd(*_dense(x, w, b), eps, out_dtype)


def _layer_norm_fwd_fake(x, w, b, eps, out_dtype):
    f32 = dict(dtype=torch.float32)
    return x.new_empty(tuple(x.shape), dtype=out_dtype), x.new_empty(tuple(x.shape[:2]), **f32), \
        x.new_empty(tuple(x.shape[:2]), **f32)


def _layer_norm_bwd(dy, x, w, mean, rstd):
    from ..kernels.layer_norm import layer_norm_bwd
    return layer_norm_bwd(*_dense(dy, x, w, mean, rstd))


def _layer_norm_bwd_fake(dy, x, w, mean, rstd):
    f32 = dict(dtype=torch.float32)
    return x.new_empty(tuple(x.shape)), w.new_empty(tuple(w.shape), **f32), w.new_empty(tuple(w.shape), **f32)


def _loss_fwd(z, f, fine, kl, rec, coarse, y, valid, cw, beta, beta_value, tau, kd_scale, g_fine, g_kd, g_feat,
              l_rec):
    from ..kernels.loss import cmath_loss_fwd
    z, f, fine, kl, rec, coarse, y, valid, cw, beta = _dense(z, f, fine, kl, rec, coarse, y, valid, cw, beta)
    return cmath_loss_fwd(z, f, fine, kl, rec, coarse, y, valid, cw, beta, beta_value, tau, kd_scale, g_fine,
                          g_kd, g_feat, l_rec)


def _loss_fwd_fake(z, f, fine, kl, rec, coarse, y, valid, cw, beta, beta_value, tau, kd_scale, g_fine, g_kd,
                   g_feat, l_rec):
    from ..kernels.loss import TERMS
    return z.new_empty((), dtype=torch.float32), z.new_empty((len(TERMS),), dtype=torch.float32)


def _loss_bwd(dtotal, z, f, fine, coarse, y, valid, cw, terms, tau, kd_scale, g_fine, g_kd, g_feat, l_rec,
              teacher_grad, need_fine, need_kl, need_rec):
    from ..kernels.loss import cmath_loss_bwd
    dtotal, z, f, fine, coarse, y, valid, cw, terms = _dense(dtotal, z, f, fine, coarse, y, valid, cw, terms)
    dz, df, dfine, dkl, drec = cmath_loss_bwd(dtotal, z, f, fine, coarse, y, valid, cw, terms, tau, kd_scale,
                                              g_fine, g_kd, g_feat, l_rec, teacher_grad, need_fine, need_kl,
                                              need_rec)
    f32 = dict(dtype=torch.float32)
    return (dz, df, dfine if dfine is not None else _empty(fine),
            dkl if dkl is not None else z.new_empty((0,), **f32), drec if drec is not None else z.new_empty((0,), **f32))


def _loss_bwd_fake(dtotal, z, f, fine, coarse, y, valid, cw, terms, tau, kd_scale, g_fine, g_kd, g_feat, l_rec,
                   teacher_grad, need_fine, need_kl, need_rec):
    f32 = dict(dtype=torch.float32)
    need_fine = need_fine and g_feat != 0.0
    return (z.new_empty(tuple(z.shape)), f.new_empty(tuple(f.shape)),
            fine.new_empty(tuple(fine.shape)) if need_fine else _empty(fine),
            z.new_empty((z.shape[0],), **f32) if need_kl else z.new_empty((0,), **f32),
            z.new_empty((), **f32) if need_rec else z.new_empty((0,), **f32))


def _row_conv_taps(weight, dtype):
    from ..kernels.row_conv import tap_major
    return list(tap_major([w.contiguous() for w in weight], dtype))


def _row_conv_taps_fake(weight, dtype):
    return [w.new_empty((w.shape[2], w.shape[1], -(-w.shape[0] // 16) * 16), dtype=dtype) for w in weight]


SCHEMAS = {
    "cma_fwd": ("(Tensor q, Tensor k, Tensor v, Tensor? gates, Tensor q_len, Tensor kv_len, Tensor? seed, "
                "float sm_scale, float dropout_p, bool joint, bool store_ungated, Tensor? starts=None, "
                "int max_len=0) -> (Tensor, Tensor, Tensor)",
                _cma_fwd, _cma_fwd_fake),
    "cma_bwd": ("(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor out_u, Tensor lse, "
                "Tensor? gates, Tensor q_len, Tensor kv_len, Tensor? seed, float sm_scale, float dropout_p, "
                "bool joint, Tensor? starts=None, int max_len=0) -> (Tensor, Tensor, Tensor)", _cma_bwd, _cma_bwd_fake),
    "vf_fwd": ("(Tensor e, Tensor weight, Tensor? bias, Tensor? eps, Tensor? row_mask, Tensor? seed, "
               "bool training, float logvar_clamp, bool return_eps, bool save_h) -> (Tensor, Tensor, Tensor, Tensor)",
               _vf_fwd, _vf_fwd_fake),
    "vf_bwd": ("(Tensor h, Tensor? dz, Tensor? dkl, Tensor? eps, Tensor? row_mask, Tensor? seed, bool training, "
               "float logvar_clamp, ScalarType out_dtype) -> Tensor", _vf_bwd, _vf_bwd_fake),
    "poe_fwd": ("(Tensor mu, Tensor logvar, Tensor? eps, Tensor? row_mask, Tensor? seed, bool training, "
                "float logvar_clamp, bool return_eps) -> (Tensor, Tensor, Tensor)", _poe_fwd, _poe_fwd_fake),
    "poe_bwd": ("(Tensor mu, Tensor logvar, Tensor? dz, Tensor? dkl, Tensor? eps, Tensor? row_mask, Tensor? seed, "
                "bool training, float logvar_clamp) -> (Tensor, Tensor)", _poe_bwd, _poe_bwd_fake),
    "row_conv_fwd": ("(Tensor x, Tensor? xb, Tensor[] weight, Tensor[]? bias, Tensor pos, Tensor lens, int pad, "
                     "int act, bool save_pre, Tensor? ref=None) -> (Tensor, Tensor, Tensor)",
                     _row_conv_fwd, _row_conv_fwd_fake),
    "row_conv_taps": ("(Tensor[] weight, ScalarType dtype) -> Tensor[]", _row_conv_taps, _row_conv_taps_fake),
    "row_conv_bwd": ("(Tensor dy, Tensor x, Tensor? xb, Tensor[] weight, Tensor pre, Tensor pos, Tensor lens, int pad, "
                     "int act, bool has_bias, bool need_dx) -> (Tensor, Tensor, Tensor, Tensor)",
                     _row_conv_bwd, _row_conv_bwd_fake),
    "standardise": ("(Tensor[] x, Tensor[] mean, Tensor[] std, Tensor? src, Tensor pos, Tensor lens, "
                    "ScalarType out_dtype) -> Tensor", _standardise, _standardise_fake),
    "rec_total": ("(Tensor part, Tensor pos, Tensor lens) -> (Tensor, Tensor)", _rec_total, _rec_total_fake),
    "rec_bwd": ("(Tensor x_hat, Tensor ref, Tensor grec, Tensor nv, Tensor pos, Tensor lens, int[] dims) -> Tensor",
                _rec_bwd, _rec_bwd_fake),
    "layer_norm_fwd": ("(Tensor x, Tensor w, Tensor b, float eps, ScalarType out_dtype) -> (Tensor, Tensor, Tensor)",
                       _layer_norm_fwd, _layer_norm_fwd_fake),
    "layer_norm_bwd": ("(Tensor dy, Tensor x, Tensor w, Tensor mean, Tensor rstd) -> (Tensor, Tensor, Tensor)",
                       _layer_norm_bwd, _layer_norm_bwd_fake),
    "loss_fwd": ("(Tensor z, Tensor f, Tensor fine, Tensor? kl, Tensor? rec, Tensor coarse, Tensor y, Tensor valid, "
                 "Tensor? cw, Tensor? beta, float beta_value, float tau, float kd_scale, float g_fine, float g_kd, "
                 "float g_feat, float l_rec) -> (Tensor, Tensor)", _loss_fwd, _loss_fwd_fake),
    "loss_bwd": ("(Tensor dtotal, Tensor z, Tensor f, Tensor fine, Tensor coarse, Tensor y, Tensor valid, Tensor? cw, "
                 "Tensor terms, float tau, float kd_scale, float g_fine, float g_kd, float g_feat, float l_rec, "
                 "bool teacher_grad, bool need_fine, bool need_kl, bool need_rec) "
                 "-> (Tensor, Tensor, Tensor, Tensor, Tensor)", _loss_bwd, _loss_bwd_fake),
}

_REGISTERED, REASON = library_status()
if _REGISTERED:
    _LIB = torch.library.Library(NAMESPACE, "DEF")
    # needs_fixed_stride_order: Inductor hands the operators tensors with the strides they had when
    # traced, rather than any layout it prefers.
    _TAGS = (torch.Tag.needs_fixed_stride_order,) if hasattr(torch.Tag, "needs_fixed_stride_order") else ()
    for _name, (_schema, _impl, _fake) in SCHEMAS.items():
        _LIB.define(_name + _schema, tags=_TAGS)
        _LIB.impl(_name, _impl, "CompositeExplicitAutograd")
        torch.library.register_fake(f"{NAMESPACE}::{_name}", _fake, lib=_LIB)


def op(name: str):
    """The operator ``torch.ops.cmath_fast.<name>``, or (torch < 2.4) its plain implementation."""
    if _REGISTERED:
        return getattr(torch.ops.cmath_fast, name)
    return SCHEMAS[name][1]

"""GPU checks at real shapes (DESIGN §4), marked cuda: skipped with the reason on CPU.

flash-attention's rule: the kernel's error against an fp32 reference is at most twice plain
PyTorch's error at the same dtype, for the output and every gradient. Backward is bitwise
deterministic."""

import pytest
import torch

from cmath_fast.bench.providers import attention_inputs
from cmath_fast.bench.shapes import ATTENTION_SHAPES, AttentionShape
from cmath_fast.config import CMATHConfig
from cmath_fast.reference import cross_modal_attention_ref, variational_fusion_ref

pytestmark = pytest.mark.cuda

SHAPES = [ATTENTION_SHAPES["R1-d1024"], ATTENTION_SHAPES["R2-d256"],
          AttentionShape("long-d512", (2048, 1500, 700, 3), 512, 8, centrals=1, streams=2)]


def _max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


def _attention(inp, q, kv, gates, fused):
    S = kv.shape[0]
    if fused:
        from cmath_fast.ops.cross_modal_attention import cross_modal_attention_packed
        return cross_modal_attention_packed(q, kv, inp.lengths, gates=gates)
    return cross_modal_attention_ref(q, [kv[s, :, :, 0] for s in range(S)], [kv[s, :, :, 1] for s in range(S)],
                                     inp.lengths, [inp.lengths] * S, gates=gates)


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attention_error_at_most_twice_pytorch(shape, dtype):
    inp = attention_inputs(shape, dtype, device="cuda")
    leaves = [inp.q, inp.kv, inp.gates]
    leaves32 = [t.detach().float().requires_grad_(True) for t in leaves]
    ref = _attention(inp, *leaves32, fused=False)
    dout = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, leaves32, dout)
    results = {}
    for fused in (False, True):
        out = _attention(inp, *leaves, fused=fused)
        grads = torch.autograd.grad(out, leaves, dout.to(dtype))
        results[fused] = [out] + list(grads)
    names = ["out", "dq", "dkv", "dgates"]
    for name, r, torch_lp, ours in zip(names, [ref] + list(ref_grads), results[False], results[True]):
        bound = 2 * _max_err(torch_lp, r) + 1e-5
        err = _max_err(ours, r)
        assert err <= bound, f"{shape.name} {dtype} {name}: error {err:.3g} > 2 x PyTorch's {bound / 2:.3g}"


def test_attention_backward_is_bitwise_deterministic():
    inp = attention_inputs(ATTENTION_SHAPES["R1-d512"], torch.bfloat16, device="cuda")
    leaves = [inp.q, inp.kv, inp.gates]
    out = _attention(inp, *leaves, fused=True)
    dout = torch.randn_like(out)
    first = torch.autograd.grad(out, leaves, dout, retain_graph=True)
    second = torch.autograd.grad(out, leaves, dout)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fusion_error_at_most_twice_pytorch(dtype):
    from cmath_fast.ops import variational_fusion
    g = torch.Generator().manual_seed(0)
    N, d_in, d_z = 16 * 110, 3 * 1024, 1024
    e = torch.randn(N, d_in, generator=g)
    w = torch.randn(2 * d_z, d_in, generator=g) * d_in ** -0.5
    b = torch.randn(2 * d_z, generator=g)
    eps = torch.randn(N, d_z, generator=g).cuda()
    rows = (torch.rand(N, generator=g) > 0.1).cuda()
    leaves = [t.cuda().to(dtype).requires_grad_(True) for t in (e, w, b)]
    leaves32 = [t.detach().float().requires_grad_(True) for t in leaves]
    ref = variational_fusion_ref(*leaves32, eps=eps, row_mask=rows)
    ups = [torch.randn_like(ref[0]), torch.randn_like(ref[1])]
    ref_grads = torch.autograd.grad(ref, leaves32, ups)
    res = {}
    for name, fn in (("torch", variational_fusion_ref), ("ours", variational_fusion)):
        out = fn(*leaves, eps=eps.to(dtype), row_mask=rows)
        grads = torch.autograd.grad(out, leaves, [u.to(dtype) for u in ups])
        res[name] = list(out) + list(grads)
    for i, r in enumerate(list(ref) + list(ref_grads)):
        bound = 2 * _max_err(res["torch"][i], r) + 1e-4
        err = _max_err(res["ours"][i], r)
        assert err <= bound, f"fusion {dtype} output/grad #{i}: error {err:.3g} > 2 x PyTorch's {bound / 2:.3g}"


@pytest.mark.parametrize("c_in, c_out, k", [(1582, 2048, 3), (2048, 1024, 3), (4096, 342, 1)],
                         ids=["enc1-audio", "enc2", "dec2-visual"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_row_conv_error_at_most_twice_conv1d(c_in, c_out, k, dtype, monkeypatch):
    """The U-Net's convolutions at iemocap-d1024 sizes on the R1 batch (16 x 110 rows): output and
    every gradient within 2x cuDNN Conv1d's own error at the same dtype (against fp32)."""
    import torch.nn.functional as F
    from cmath_fast.bench.shapes import R1_LENGTHS
    from cmath_fast.ops.row_conv import dialogue_rows, row_conv
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # an fp32 reference in full fp32
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    g = torch.Generator().manual_seed(0)
    lens = torch.tensor(R1_LENGTHS)
    B, L = len(R1_LENGTHS), max(R1_LENGTHS)
    mask = (torch.arange(L)[None] < lens[:, None]).cuda()
    x = (torch.randn(B, L, c_in, generator=g).cuda() * mask[..., None])
    w = (torch.randn(c_out, c_in, k, generator=g) * (c_in * k) ** -0.5).cuda()
    b = torch.randn(c_out, generator=g).cuda()
    dy = torch.randn(B, L, c_out, generator=g).cuda()
    act = "gelu" if k > 1 else None

    def conv1d(x, w, b):  # the reference U-Net's step, channel-first
        y = F.conv1d(x.transpose(1, 2), w, b, padding=k // 2).transpose(1, 2)
        return (F.gelu(y) if act else y) * mask[..., None].to(y.dtype)

    def ours(x, w, b):
        pos, ln = dialogue_rows(lens.cuda(), L)
        return row_conv(x.reshape(B * L, c_in), w, b, pos, ln, activation=act).view(B, L, c_out)

    def run(fn, dt):
        leaves = [t.to(dt).requires_grad_() for t in (x, w, b)]
        out = fn(*leaves)
        return [out] + list(torch.autograd.grad(out, leaves, dy.to(dt)))
    exact = run(conv1d, torch.float32)
    theirs, mine = run(conv1d, dtype), run(ours, dtype)
    m = mask[..., None]
    for i, name in enumerate(["y", "dx", "dw", "db"]):
        e, t, o = exact[i], theirs[i], mine[i]
        if name == "dx":  # padding rows: ours are zero, the reference's are masked later
            e, t, o = e * m, t * m, o * m
        bound = 2 * _max_err(t, e) + 1e-5 * max(1.0, e.abs().max().item())
        assert _max_err(o, e) <= bound, f"{name}: {_max_err(o, e):.3g} > 2 x cuDNN's {bound / 2:.3g}"


def test_fused_loss_matches_the_reference_at_scale():
    from tests.ops.test_loss import _out, _run
    from cmath_fast.losses import cmath_loss
    from cmath_fast.ops.loss import cmath_loss_fused
    cfg = CMATHConfig.meld()
    ref_out, labels, ref_leaves = _out(3, 64, 110, cfg.num_classes, 1024)
    out, labels_d, leaves = _out(3, 64, 110, cfg.num_classes, 1024, device="cuda")
    ref = _run(cmath_loss, cfg, ref_out, labels, ref_leaves, None, epoch=2)
    got = _run(cmath_loss_fused, cfg, out, labels_d, leaves, None, epoch=2)
    torch.testing.assert_close(got[0].cpu(), ref[0].detach(), atol=1e-4, rtol=1e-4)
    for name, r in ref[2].items():
        if r is not None:
            torch.testing.assert_close(got[2][name].cpu(), r, atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_grouped_unets_match_the_reference_at_scale(packed, monkeypatch):
    """The three U-Nets as grouped row kernels (standardisation, four grouped convolutions, L_rec
    from the epilogue) against the reference modules' own forwards, iemocap widths at d 256 on the
    R1 batch, fp32 without TF32: codes, L_rec and every encoder gradient."""
    import dataclasses
    import torch.nn.functional as F
    from cmath_fast.bench.shapes import R1_LENGTHS
    from cmath_fast.config import MODALITIES
    from cmath_fast.impl.triton_impl import TritonImplementation
    from cmath_fast.model import CMATH
    from cmath_fast.packing import pack_rows
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    cfg = dataclasses.replace(CMATHConfig.iemocap(), d_model=256, dropout=0.0)
    model = CMATH(cfg, backend="torch").cuda()
    lens = torch.tensor(R1_LENGTHS).cuda()
    B, L = len(R1_LENGTHS), max(R1_LENGTHS)
    mask = torch.arange(L, device="cuda")[None] < lens[:, None]
    g = torch.Generator().manual_seed(1)
    dims = cfg.feature_dims()
    feats = {m: (torch.randn(B, L, dims[m], generator=g) * 2).cuda() * mask[..., None] for m in MODALITIES}
    dz = torch.randn(3, B, L, cfg.d_model, generator=g).cuda() * mask[..., None]
    encs = [model.encoders[m] for m in MODALITIES]
    params = [p for e in encs for p in e.parameters()]
    n = mask.sum()
    rec_r, loss_r = 0.0, 0.0
    for i, e in enumerate(encs):
        z, x_hat, x_std = e(feats[MODALITIES[i]], mask)
        rec_r = rec_r + F.mse_loss(x_hat, x_std, reduction="sum") / (n * x_std.shape[-1])
        loss_r = loss_r + (z * dz[i]).sum()
    grads_r = torch.autograd.grad(loss_r + rec_r, params)
    rows = pack_rows(lens.cpu(), L).to("cuda") if packed else None
    codes, rec = TritonImplementation().unets(encs, feats, rows.valid[None] if packed else mask, lens, rows)
    z = codes.stacked
    dz_o = torch.stack([rows.pack(d)[None] for d in dz]) if packed else dz
    grads = torch.autograd.grad((z * dz_o).sum() + rec, params)
    torch.testing.assert_close(rec, rec_r, atol=1e-5, rtol=1e-5)
    for p_name, a, b in zip([n_ for e in encs for n_, _ in e.named_parameters()], grads, grads_r):
        assert _max_err(a, b) <= 1e-4 * max(1.0, b.abs().max().item()), p_name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_stacked_layer_norm_error_at_most_twice_pytorch(dtype):
    """The three centrals' norms at R1 x d 1024: output and every gradient within 2x PyTorch's own
    LayerNorm error at the same dtype (against fp32)."""
    import torch.nn.functional as F
    from cmath_fast.ops.layer_norm import stacked_layer_norm_op
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 1760, 1024, generator=g) * 3 + 1).cuda()
    w = (torch.randn(3, 1024, generator=g) * 0.2 + 1).cuda()
    b = torch.randn(3, 1024, generator=g).cuda()
    dy = torch.randn(3, 1760, 1024, generator=g).cuda()

    def torch_ln(x, w, b):
        return torch.stack([F.layer_norm(x[c], (1024,), w[c], b[c]) for c in range(3)])

    def run(fn, dt):
        leaves = [t.to(dt).requires_grad_() for t in (x, w, b)]
        out = fn(*leaves) if fn is torch_ln else fn(*leaves, 1e-5)
        return [out] + list(torch.autograd.grad(out, leaves, dy.to(dt)))
    exact = run(torch_ln, torch.float32)
    theirs, mine = run(torch_ln, dtype), run(stacked_layer_norm_op, dtype)
    for i, name in enumerate(["y", "dx", "dw", "db"]):
        e, t, o = exact[i], theirs[i], mine[i]
        bound = 2 * _max_err(t, e) + 1e-5 * max(1.0, e.abs().max().item())
        assert _max_err(o, e) <= bound, f"{name}: {_max_err(o, e):.3g} > 2 x PyTorch's {bound / 2:.3g}"

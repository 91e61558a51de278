"""The fused variational fusion and product of experts against float64 references."""

import os

import numpy as np
import pytest
import torch

from cmath_fast.reference import poe_fusion_ref, variational_fusion_ref
from tests.helpers import assert_close
from cmath_fast.tolerances import TOL

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1 (Triton's CPU interpreter)")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (name, N, d_in, d_z, weight scale): the scale drives logvar past the clamp on both sides
SHAPES = [
    ("one-row", 1, 16, 16, 1.0),
    ("ragged-rows-small-din", 37, 13, 20, 2.0),
    ("din-lt-16-not-pow2", 19, 7, 5, 6.0),
    ("two-column-blocks", 21, 24, 40, 1.0),
]


def _inputs(N, d_in, d_z, scale, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(N, d_in, generator=g)
    w = torch.randn(2 * d_z, d_in, generator=g) * scale / d_in ** 0.5 * 4
    b = torch.randn(2 * d_z, generator=g)
    eps = torch.randn(N, d_z, generator=g)
    rows = torch.rand(N, generator=g) > 0.3
    to = lambda t: t.to(DEVICE, dtype).requires_grad_(True)
    return to(e), to(w), to(b), eps.to(DEVICE), rows.to(DEVICE)


def _grads(outs, leaves, seed=5):
    g = torch.Generator().manual_seed(seed)
    ups = [torch.randn(o.shape, generator=g).to(o.device, o.dtype) for o in outs]
    loss = sum((o * u).sum() for o, u in zip(outs, ups))
    return torch.autograd.grad(loss, leaves)


def _compare(fused_out, ref_out, leaves, leaves64, dtype, label):
    atol, rtol = TOL[dtype]
    for name, a, b in zip(("z", "kl"), fused_out, ref_out):
        assert_close(a.cpu(), b, atol=atol, rtol=rtol * 10, name=f"{label} {name}")
    for i, (a, b) in enumerate(zip(_grads(fused_out, leaves), _grads([r.to(torch.float64) for r in ref_out], leaves64))):
        # Normwise: a gradient element is a sum of terms as large as the largest gradient (exp(lv/2)
        # reaches e^5 at the clamp), so its rounding error scales with that, not with its own value.
        scale = max(1.0, float(b.abs().max()))
        assert_close(a.float().cpu(), b, atol=atol * 10 * scale, rtol=rtol * 10, name=f"{label} grad[{i}]")


def _ref_leaves(*ts):
    return [t.detach().double().cpu().requires_grad_(True) for t in ts]


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gaussian_against_float64(shape, training):
    from cmath_fast.ops import variational_fusion
    _, N, d_in, d_z, scale = shape
    e, w, b, eps, rows = _inputs(N, d_in, d_z, scale)
    with torch.no_grad():
        lv = (e @ w.T + b)[:, d_z:]
    if scale > 1.5:
        assert (lv > 10).any() and (lv < -10).any(), "the shape must drive logvar past the clamp"
    out = variational_fusion(e, w, b, eps=eps, row_mask=rows, training=training)
    e64, w64, b64 = _ref_leaves(e, w, b)
    ref = variational_fusion_ref(e64, w64, b64, eps=eps.double().cpu(), row_mask=rows.cpu(), training=training)
    _compare(out, ref, [e, w, b], [e64, w64, b64], torch.float32, shape[0])
    assert out[1][~rows].abs().max() == 0 if (~rows).any() else True


def test_without_bias_and_without_row_mask():
    from cmath_fast.ops import variational_fusion
    e, w, _, eps, _ = _inputs(9, 16, 8, 1.0)
    out = variational_fusion(e, w, None, eps=eps)
    e64, w64 = _ref_leaves(e, w)
    _compare(out, variational_fusion_ref(e64, w64, None, eps=eps.double().cpu()), [e, w], [e64, w64],
             torch.float32, "no bias")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    from cmath_fast.ops import variational_fusion
    e, w, b, eps, rows = _inputs(21, 24, 40, 0.5, dtype=dtype)
    out = variational_fusion(e, w, b, eps=eps, row_mask=rows)
    assert out[0].dtype == dtype and out[1].dtype == dtype
    e64, w64, b64 = _ref_leaves(e, w, b)
    ref = variational_fusion_ref(e64, w64, b64, eps=eps.double().cpu(), row_mask=rows.cpu())
    atol, rtol = TOL[dtype]
    assert_close(out[0].float().cpu(), ref[0], atol=atol * 4, rtol=rtol * 4, name=f"{dtype} z")
    assert_close(out[1].float().cpu(), ref[1], atol=atol * 40, rtol=rtol * 4, name=f"{dtype} kl")


def test_in_kernel_noise_statistics_and_reproducibility():
    from cmath_fast.ops import variational_fusion
    N, d_z = 160, 64  # 10240 draws
    e = torch.zeros(N, 16, device=DEVICE)
    w = torch.zeros(2 * d_z, 16, device=DEVICE)
    torch.manual_seed(7)
    z, _, eps = variational_fusion(e, w, None, return_eps=True)
    # mu = 0 and logvar = 0: z is the noise itself
    assert_close(z.cpu(), eps.cpu(), atol=0, name="z == eps")
    x = eps.double().cpu().numpy()
    n = x.size
    assert abs(x.mean()) < 4 / np.sqrt(n), f"mean {x.mean()}"
    assert abs(x.std() - 1) < 4 * np.sqrt(0.5 / n), f"std {x.std()}"
    # independence: correlation between neighbouring rows and between neighbouring columns
    for a, b, what in ((x[:-1], x[1:], "rows"), (x[:, :-1], x[:, 1:], "columns")):
        r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert abs(r) < 4 / np.sqrt(a.size), f"correlation across {what}: {r}"
    torch.manual_seed(7)
    z_again, _, _ = variational_fusion(e, w, None, return_eps=True)
    assert torch.equal(z_again, z), "the same torch.manual_seed must give the same noise"
    z_other, _, _ = variational_fusion(e, w, None, return_eps=True)
    assert not torch.equal(z_other, z), "a new draw must give new noise"
    z_eval, _ = variational_fusion(e, w, None, training=False)
    assert z_eval.abs().max() == 0, "no noise in eval"


def test_backward_regenerates_the_forward_noise():
    from cmath_fast.ops import variational_fusion
    e, w, b, _, rows = _inputs(37, 13, 20, 1.0)
    torch.manual_seed(3)
    out = variational_fusion(e, w, b, row_mask=rows, return_eps=True)
    z, kl, eps = out
    e64, w64, b64 = _ref_leaves(e, w, b)
    ref = variational_fusion_ref(e64, w64, b64, eps=eps.double().cpu(), row_mask=rows.cpu())
    _compare((z, kl), ref, [e, w, b], [e64, w64, b64], torch.float32, "in-kernel noise")


@pytest.mark.parametrize("M, N, d_z", [(1, 1, 16), (3, 37, 20), (2, 19, 5)])
def test_poe_against_float64(M, N, d_z):
    from cmath_fast.ops import poe_fusion
    g = torch.Generator().manual_seed(M * 100 + N)
    mu = torch.randn(M, N, d_z, generator=g).to(DEVICE).requires_grad_(True)
    lv = (torch.randn(M, N, d_z, generator=g) * 6).to(DEVICE).requires_grad_(True)
    eps = torch.randn(N, d_z, generator=g).to(DEVICE)
    rows = (torch.rand(N, generator=g) > 0.3).to(DEVICE)
    out = poe_fusion(mu, lv, eps=eps, row_mask=rows)
    mu64, lv64 = _ref_leaves(mu, lv)
    ref = poe_fusion_ref(mu64, lv64, eps=eps.double().cpu(), row_mask=rows.cpu())
    _compare(out, ref, [mu, lv], [mu64, lv64], torch.float32, f"poe M={M}")


def test_poe_dominant_expert_and_in_kernel_noise():
    from cmath_fast.ops import poe_fusion
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 8, 16, generator=g).to(DEVICE)
    lv = torch.zeros(3, 8, 16).to(DEVICE)
    lv[2] = -10.0
    z, _ = poe_fusion(mu, lv, training=False)
    assert_close(z.cpu(), mu[2].cpu(), atol=1e-3, name="dominant expert")
    torch.manual_seed(1)
    z1, kl1, eps = poe_fusion(mu, lv, return_eps=True)
    mu64, lv64 = _ref_leaves(mu, lv)
    zr, klr = poe_fusion_ref(mu64, lv64, eps=eps.double().cpu())
    assert_close(z1.cpu(), zr, atol=1e-5, name="poe z with in-kernel noise")


def test_deterministic_kl():
    from cmath_fast.ops import variational_fusion
    e, w, b, eps, rows = _inputs(21, 24, 40, 1.0)
    a = variational_fusion(e, w, b, eps=eps, row_mask=rows)[1]
    assert torch.equal(a, variational_fusion(e, w, b, eps=eps, row_mask=rows)[1])


@pytest.mark.parametrize("kwargs, match", [
    (dict(weight=torch.randn(5, 4)), "first dim must be even"),
    (dict(weight=torch.randn(6, 3)), r"weight: expected shape \(2\*d_z, d_in=4\)"),
    (dict(row_mask=torch.ones(2, dtype=torch.bool)), r"row_mask: expected shape \(3,\)"),
    (dict(e=torch.randn(3, 4, dtype=torch.float64)), "float16, bfloat16 or float32"),
    (dict(eps=torch.randn(3, 2)), r"eps: expected shape \(3, 3\)"),
    (dict(bias=torch.randn(5)), r"bias: expected shape \(6,\)"),
])
def test_bad_inputs(kwargs, match):
    from cmath_fast.ops import variational_fusion
    args = dict(e=torch.randn(3, 4), weight=torch.randn(6, 4), bias=None)
    args.update(kwargs)
    args = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in args.items()}
    e, w, b = args.pop("e"), args.pop("weight"), args.pop("bias")
    with pytest.raises((ValueError, TypeError), match=match):
        variational_fusion(e, w, b, **args)


def test_fp32_master_weight_gets_its_gradient_in_fp32_under_autocast():
    """Under bf16 autocast the op reads the fp32 master weight and bias in bf16 (cast inside) and
    hands their gradients back in fp32, computed with fp32 results: no bf16 copy on the autograd
    graph, and the gradient as close to the float64 reference (on the bf16-rounded inputs) as the
    bf16 activations allow."""
    from cmath_fast.ops.variational_fusion import variational_fusion
    e, w, b, eps, rows = _inputs(23, 32, 16, 1.0)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        z, kl = variational_fusion(e, w, b, eps=eps, row_mask=rows, training=True)
    assert z.dtype == torch.bfloat16
    # the master weight and bias feed the op directly (no cast node between them and it)
    leaves = [f for f, _ in z.grad_fn.next_functions if f is not None]
    assert sum(type(f).__name__ == "AccumulateGrad" for f in leaves) == 2, leaves
    (z.float().sum() + kl.float().sum()).backward()
    assert w.grad.dtype == torch.float32 and b.grad.dtype == torch.float32
    rnd = lambda t: t.detach().bfloat16().double().requires_grad_(True)  # noqa: E731
    e64, w64, b64 = rnd(e), rnd(w), rnd(b)
    z64, kl64 = variational_fusion_ref(e64, w64, b64, eps=eps.double(), row_mask=rows, training=True)[:2]
    (z64.sum() + kl64.sum()).backward()
    for got, want in ((w.grad, w64.grad), (b.grad, b64.grad)):
        err = (got.double() - want).norm() / want.norm()
        assert err < 2e-2, float(err)

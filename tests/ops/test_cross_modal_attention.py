"""The fused attention against the float64 reference: output and every gradient.

Runs under TRITON_INTERPRET=1 on CPU (tiny shapes: the interpreter is slow) and on CUDA."""

import os

import pytest
import torch

from cmath_fast.reference import cross_modal_attention_ref
from tests.helpers import assert_close
from cmath_fast.tolerances import TOL

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1 (Triton's CPU interpreter)")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (name, B, Lq, stream key lengths, H, dh, q_lengths, kv_lengths per stream)
SHAPES = [
    ("three-streams-ragged", 2, 19, (19, 7, 33), 2, 16, [19, 5], [[19, 3], [0, 7], [33, 1]]),
    ("one-stream", 3, 5, (5,), 1, 32, [5, 0, 1], [[5, 0, 1]]),
    ("two-streams-dh24", 2, 17, (17, 4), 2, 24, [17, 16], [[17, 16], [4, 2]]),
    ("lq-ne-lk-dh32", 1, 3, (40, 18), 2, 32, [3], [[40], [17]]),
]


def _inputs(B, Lq, lks, H, dh, dtype=torch.float32, seed=0, gates=True):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *shape: torch.randn(*shape, generator=g).to(DEVICE, dtype).requires_grad_(True)
    q = mk(B, Lq, H, dh)
    ks = [mk(B, lk, H, dh) for lk in lks]
    vs = [mk(B, lk, H, dh) for lk in lks]
    gt = None
    if gates:
        gt = torch.rand(B, Lq, len(lks), H, generator=g)
        gt[0, 0, -1, 0] = 0.0  # an exact zero: d(gates) must still be exact there
        gt = gt.to(DEVICE, dtype).requires_grad_(True)
    return q, ks, vs, gt


def _lengths(q_lengths, kv_lengths):
    return torch.tensor(q_lengths), [torch.tensor(k) for k in kv_lengths]


def _check(out, ref_fn, leaves, dtype, seed=1, label=""):
    """Compare the output and the gradients of every leaf against the float64 reference."""
    atol, rtol = TOL[dtype]
    leaves64 = [t.detach().double().cpu().requires_grad_(True) if t is not None else None for t in leaves]
    ref = ref_fn(*leaves64)
    assert torch.isfinite(out).all(), f"{label}: non-finite output"
    assert_close(out.cpu(), ref, atol=atol, rtol=rtol, name=f"{label} out")
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    used = [t for t in leaves if t is not None]
    used64 = [t for t in leaves64 if t is not None]
    grads = torch.autograd.grad(out, used, dout.to(out.device, out.dtype))
    grads64 = torch.autograd.grad(ref, used64, dout.double())
    for i, (a, b) in enumerate(zip(grads, grads64)):
        assert_close(a.float().cpu(), b, atol=atol * 4, rtol=rtol * 4, name=f"{label} grad[{i}]")


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("joint", [False, True], ids=["per-stream", "joint"])
def test_forward_and_gradients_fp32(shape, joint):
    from cmath_fast.ops import cross_modal_attention
    _, B, Lq, lks, H, dh, ql, kl = shape
    q, ks, vs, g = _inputs(B, Lq, lks, H, dh)
    q_len, kv_len = _lengths(ql, kl)
    S = len(lks)
    out = cross_modal_attention(q, ks, vs, q_len, kv_len, gates=g, joint=joint)

    def ref(q, *rest):
        return cross_modal_attention_ref(q, list(rest[:S]), list(rest[S:2 * S]), q_len, kv_len,
                                         gates=rest[2 * S], joint=joint)
    _check(out, ref, [q, *ks, *vs, g], torch.float32, label=f"{shape[0]}")


def test_without_gates_and_custom_scale():
    from cmath_fast.ops import cross_modal_attention
    q, ks, vs, _ = _inputs(2, 9, (9, 9), 2, 16, gates=False)
    q_len, kv_len = _lengths([9, 4], [[9, 2], [3, 9]])
    out = cross_modal_attention(q, ks, vs, q_len, kv_len, softmax_scale=0.3)

    def ref(q, k0, k1, v0, v1):
        return cross_modal_attention_ref(q, [k0, k1], [v0, v1], q_len, kv_len, softmax_scale=0.3)
    _check(out, ref, [q, *ks, *vs], torch.float32, label="no gates")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_against_fp32_reference(dtype):
    from cmath_fast.ops import cross_modal_attention
    _, B, Lq, lks, H, dh, ql, kl = SHAPES[0]
    q, ks, vs, g = _inputs(B, Lq, lks, H, dh, dtype=dtype)
    q_len, kv_len = _lengths(ql, kl)
    out = cross_modal_attention(q, ks, vs, q_len, kv_len, gates=g)
    assert out.dtype == dtype

    def ref(q, k0, k1, k2, v0, v1, v2, g):
        return cross_modal_attention_ref(q, [k0, k1, k2], [v0, v1, v2], q_len, kv_len, gates=g)
    _check(out, ref, [q, *ks, *vs, g], dtype, label=str(dtype))


@pytest.mark.parametrize("joint", [False, True], ids=["per-stream", "joint"])
def test_dropout_matches_reference_with_debug_mask(joint):
    from cmath_fast.ops import cross_modal_attention
    _, B, Lq, lks, H, dh, ql, kl = SHAPES[0]
    q, ks, vs, g = _inputs(B, Lq, lks, H, dh)
    q_len, kv_len = _lengths(ql, kl)
    torch.manual_seed(123)
    out, masks = cross_modal_attention(q, ks, vs, q_len, kv_len, gates=g, dropout_p=0.3, joint=joint,
                                       return_dropout_mask=True)
    kept = torch.cat([m.flatten() for m in masks]).ne(0).double().mean().item()
    assert 0.6 < kept < 0.8, f"keep fraction {kept} for p=0.3"

    def ref(q, k0, k1, k2, v0, v1, v2, g):
        return cross_modal_attention_ref(q, [k0, k1, k2], [v0, v1, v2], q_len, kv_len, gates=g,
                                         joint=joint, dropout_mask=[m.double().cpu() for m in masks])
    _check(out, ref, [q, *ks, *vs, g], torch.float32, label="dropout")
    # same seed, same mask; another draw, another mask
    torch.manual_seed(123)
    again = cross_modal_attention(q, ks, vs, q_len, kv_len, gates=g, dropout_p=0.3, joint=joint)
    assert torch.equal(again, out)
    other = cross_modal_attention(q, ks, vs, q_len, kv_len, gates=g, dropout_p=0.3, joint=joint)
    assert not torch.equal(other, out)


def test_backward_is_deterministic():
    from cmath_fast.ops import cross_modal_attention
    _, B, Lq, lks, H, dh, ql, kl = SHAPES[0]
    q, ks, vs, g = _inputs(B, Lq, lks, H, dh)
    q_len, kv_len = _lengths(ql, kl)
    dout = None
    results = []
    for _ in range(2):
        out = cross_modal_attention(q, ks, vs, q_len, kv_len, gates=g)
        dout = torch.randn_like(out) if dout is None else dout
        results.append(torch.autograd.grad(out, [q, *ks, *vs, g], dout))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_stacked_views_are_read_without_copy():
    """Streams that are equally spaced views of one buffer (what the fused layer produces)."""
    from cmath_fast.ops.cross_modal_attention import _stacked
    buf = torch.randn(3, 2, 5, 2, 16)
    views = list(buf.unbind(0))
    st = _stacked(views)
    assert st.data_ptr() == buf.data_ptr() and torch.equal(st, buf)
    kv = torch.randn(2, 5, 2, 2, 16)  # (B, L, [k|v], H, dh)
    st = _stacked([kv[:, :, 0], kv[:, :, 1]])
    assert st.data_ptr() == kv.data_ptr() and torch.equal(st[1], kv[:, :, 1])


@pytest.mark.parametrize("bad, match", [
    (dict(q=torch.randn(2, 3, 2, 16, dtype=torch.float64)), "float16, bfloat16 or float32"),
    (dict(gates=torch.ones(2, 3, 1, 2)), "gates: expected shape"),
    (dict(q_lengths=torch.tensor([4, 1])), r"q_lengths: expected values in \[0, 3\]"),
    (dict(kv_lengths=[torch.tensor([1.0, 1.0]), torch.tensor([1, 1])]), r"kv_lengths\[0\]: expected an integer"),
    (dict(ks=[torch.randn(2, 4, 2, 16), torch.randn(2, 2, 1, 16)]), r"ks\[1\]: expected shape"),
    (dict(dropout_p=1.0), "dropout_p"),
    (dict(q=torch.randn(2, 3, 2, 32)[..., ::2]), "last \\(head\\) dim must be contiguous"),
])
def test_bad_inputs(bad, match):
    from cmath_fast.ops import cross_modal_attention
    args = dict(q=torch.randn(2, 3, 2, 16), ks=[torch.randn(2, 4, 2, 16), torch.randn(2, 2, 2, 16)],
                vs=[torch.randn(2, 4, 2, 16), torch.randn(2, 2, 2, 16)], q_lengths=torch.tensor([3, 2]),
                kv_lengths=[torch.tensor([4, 1]), torch.tensor([2, 2])])
    args = {k: (v.to(DEVICE) if torch.is_tensor(v) else v) for k, v in args.items()}
    args.update(bad)
    kwargs = {k: args.pop(k) for k in ("gates", "dropout_p") if k in args}
    with pytest.raises((ValueError, TypeError), match=match):
        cross_modal_attention(**args, **kwargs)


@pytest.mark.parametrize("with_gates", [True, False])
def test_packed_kv_op_matches_reference(with_gates):
    """The packed-key/value entry point the fused layers use: same math, gradient packed."""
    from cmath_fast.ops.cross_modal_attention import cross_modal_attention_packed
    g = torch.Generator().manual_seed(4)
    S, B, L, H, dh = 3, 2, 13, 2, 16
    q = torch.randn(B, L, H, dh, generator=g).to(DEVICE).requires_grad_(True)
    kv = torch.randn(S, B, L, 2, H, dh, generator=g).to(DEVICE).requires_grad_(True)
    gates = torch.rand(B, L, S, H, generator=g).to(DEVICE).requires_grad_(True) if with_gates else None
    lengths = torch.tensor([13, 6])
    out = cross_modal_attention_packed(q, kv, lengths, gates=gates)

    def ref(q, kv, *gt):
        return cross_modal_attention_ref(q, [kv[s, :, :, 0] for s in range(S)], [kv[s, :, :, 1] for s in range(S)],
                                         lengths, [lengths] * S, gates=gt[0] if gt else None)
    _check(out, ref, [q, kv] + ([gates] if with_gates else []), torch.float32, label="packed")

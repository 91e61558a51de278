"""GPU checks at real shapes (DESIGN §4), marked cuda: skipped with the reason on CPU.

flash-attention's rule: the kernel's error against an fp32 reference is at most twice plain
PyTorch's error at the same dtype, for the output and every gradient. Backward is bitwise
deterministic."""

import pytest
import torch

from cmath_fast.bench.providers import attention_inputs
from cmath_fast.bench.shapes import ATTENTION_SHAPES, AttentionShape
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

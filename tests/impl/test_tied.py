"""Tied stacks (``cmath_fast.impl.batched.tied``): the parameters a batched GEMM or norm reads
become slices of one buffer instead of being stacked (copied) on every forward. The parameters,
their names, the state_dict, checkpoints and the optimiser are unaffected; a moved parameter is
re-tied."""

import os

import pytest
import torch

from cmath_fast import CMATH, CMATHConfig
from cmath_fast.impl.batched import batched_linear, tied
from tests.helpers import assert_close, make_batch

needs_kernels = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1 (Triton's CPU interpreter)")


def test_tied_linear_equals_stacked_and_routes_gradients():
    torch.manual_seed(0)
    lins = [torch.nn.Linear(5, 3) for _ in range(3)]
    x = torch.randn(3, 4, 5, requires_grad=True)
    want = torch.stack([lin(x[i]) for i, lin in enumerate(lins)])
    want.sum().backward()
    grads = [(lin.weight.grad.clone(), lin.bias.grad.clone()) for lin in lins]
    for lin in lins:
        lin.zero_grad()
    got = batched_linear(x, lins)
    base = tied([lin.weight for lin in lins])
    assert all(lin.weight.untyped_storage().data_ptr() == base.untyped_storage().data_ptr() for lin in lins)
    assert_close(got, want, atol=1e-6, name="y")
    got.sum().backward()
    for lin, (gw, gb) in zip(lins, grads):
        assert_close(lin.weight.grad, gw, atol=1e-6, name="dW")
        assert_close(lin.bias.grad, gb, atol=1e-6, name="db")


def test_moved_parameters_are_tied_again():
    lins = [torch.nn.Linear(4, 4) for _ in range(2)]
    first = tied([lin.weight for lin in lins])
    for lin in lins:  # what model.to(...) does: new storage per parameter
        lin.weight.data = lin.weight.data.clone() * 2
    again = tied([lin.weight for lin in lins])
    assert again is not first and torch.equal(again[1], lins[1].weight)
    assert lins[0].weight.data_ptr() == again.data_ptr()
    assert tied([lins[0].weight, torch.nn.Parameter(torch.zeros(3))]) is None  # shapes differ


@needs_kernels
def test_fused_model_with_tied_stacks_trains_like_the_reference(tmp_path):
    cfg = CMATHConfig.tiny(dropout=0.0)
    torch.manual_seed(0)
    ref = CMATH(cfg, backend="torch")
    fused = CMATH(cfg, backend="triton")
    fused.load_state_dict(ref.state_dict())
    batch = make_batch(cfg, [5, 3, 7])
    eps = torch.randn(3, 7, cfg.d_z, generator=torch.Generator().manual_seed(1))
    # SGD: linear in the gradients (Adam would turn rounding-level gradient differences into
    # lr-sized steps on parameters whose gradient is ~0)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ref, fused)]
    for _ in range(3):  # the optimiser writes through the tied slices; the next forward reads them
        for m, opt in zip((ref, fused), opts):
            opt.zero_grad()
            total, _ = m.loss(m(*batch[:5], eps=eps), batch[5], epoch=1)
            total.backward()
            opt.step()
    kv = fused.cma["t"].layers[0].attn.w_k[0].weight
    assert kv.untyped_storage().nbytes() > kv.numel() * kv.element_size()  # a slice of a tied buffer
    for (name, p), q in zip(ref.named_parameters(), fused.parameters()):
        assert_close(q, p, atol=1e-4, rtol=1e-4, name=name)
    # state_dict and a checkpoint round trip are unaffected by the shared buffers
    from cmath_fast.training.checkpoints import read_checkpoint, save_model
    path = str(tmp_path / "m.safetensors")
    save_model(path, fused, {"epoch": 0})
    tensors = read_checkpoint(path)[0]
    for k, v in fused.state_dict().items():
        assert torch.equal(tensors[f"model/{k}"], v), k


def test_position_tables_live_as_long_as_the_process():
    """A captured CUDA graph reads the position table it was captured with by address: past any
    number of lengths, a table handed out earlier is still held (never freed for reuse), and every
    slice equals the reference's table of that length."""
    from cmath_fast.impl import triton_impl
    from cmath_fast.reference.layers import sinusoidal_positions
    triton_impl._POSITION_TABLES.pop((16, "cpu", torch.float32), None)
    first = triton_impl._positions(5, 16, torch.device("cpu"), torch.float32)
    base = first.untyped_storage().data_ptr()
    for L in (1, 7, 64, 129, 300, 700, 40):
        assert torch.equal(triton_impl._positions(L, 16, "cpu", torch.float32), sinusoidal_positions(L, 16))
    tables = triton_impl._POSITION_TABLES[(16, "cpu", torch.float32)]
    assert [t.shape[0] for t in tables] == [128, 256, 512, 1024]
    assert tables[0].untyped_storage().data_ptr() == base

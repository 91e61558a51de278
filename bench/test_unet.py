"""The U-Net's convolutions at the model's sizes (iemocap-d1024, the R1 batch: 16 dialogues x 110
rows), forward + backward with GELU and the padding mask: ``eager`` (the reference: Conv1d on the
channel-first layout, with the transposes around it), ``compile`` (the same under torch.compile)
and ``triton`` (``row_conv`` on the row-major layout, no transposes)."""

import pytest
import torch
import torch.nn.functional as F

from cmath_fast.bench.shapes import R1_LENGTHS

# (name, C_in, C_out, k): the audio encoder's first convolution and the shared second one
CONVS = [("enc1-audio-d1024", 1582, 2048, 3), ("enc2-d1024", 2048, 1024, 3)]


@pytest.mark.parametrize("name, c_in, c_out, k", CONVS, ids=[c[0] for c in CONVS])
@pytest.mark.parametrize("provider", ["eager", "compile", "triton"])
def test_unet_conv(record, record_kernels, name, c_in, c_out, k, provider):
    from cmath_fast.ops.row_conv import dialogue_rows, row_conv
    lens = torch.tensor(R1_LENGTHS, device="cuda")
    B, L = len(R1_LENGTHS), max(R1_LENGTHS)
    mask = torch.arange(L, device="cuda")[None] < lens[:, None]
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(B, L, c_in, generator=g).cuda() * mask[..., None]).to(torch.bfloat16).requires_grad_()
    w = (torch.randn(c_out, c_in, k, generator=g) * (c_in * k) ** -0.5).cuda().to(torch.bfloat16).requires_grad_()
    b = torch.randn(c_out, generator=g).cuda().to(torch.bfloat16).requires_grad_()
    pos, ln = dialogue_rows(lens, L)

    def reference(x, w, b):
        y = F.conv1d(x.transpose(1, 2), w, b, padding=k // 2)
        return (F.gelu(y) * mask[:, None, :].to(y.dtype)).transpose(1, 2)

    if provider == "triton":
        fn = lambda: row_conv(x.view(B * L, c_in), w, b, pos, ln, activation="gelu").view(B, L, c_out)  # noqa: E731
    else:
        f = torch.compile(reference) if provider == "compile" else reference
        fn = lambda: f(x, w, b)  # noqa: E731
    expect = reference(x.float(), w.float(), b.float())
    torch.testing.assert_close(fn().float() * mask[..., None], expect, atol=5e-2, rtol=5e-2)
    dy = torch.randn(B, L, c_out, device="cuda", dtype=torch.bfloat16)

    def run():
        return torch.autograd.grad(fn(), (x, w, b), dy)
    flops = 3 * 2.0 * sum(R1_LENGTHS) * c_in * c_out * k  # forward + two backward GEMMs, valid rows
    row = dict(op="unet_conv", shape=name, mode="fwd+bwd", dtype="bf16", provider=provider)
    record(run, row, flops=flops)
    record_kernels(run, row, flops=flops)

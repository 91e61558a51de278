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


@pytest.mark.parametrize("provider", ["eager", "compile", "triton"])
def test_unets(record, record_kernels, provider):
    """The three modalities' U-Nets as the model calls them, forward + backward with L_rec, bf16
    weights, iemocap-d1024 on the R1 batch: ``eager`` (the reference modules, three U-Nets one
    after another on the padded layout), ``compile`` (the same under torch.compile) and ``triton``
    (``TritonImplementation.unets``: one grouped launch per layer for the three, on packed rows)."""
    import torch.nn.functional as F
    from cmath_fast.config import MODALITIES, CMATHConfig
    from cmath_fast.impl.triton_impl import TritonImplementation
    from cmath_fast.model import CMATH
    from cmath_fast.packing import pack_rows
    cfg = CMATHConfig.iemocap()
    torch.manual_seed(0)
    model = CMATH(cfg, backend="torch").cuda().to(torch.bfloat16).train()
    encs = [model.encoders[m] for m in MODALITIES]
    lens = torch.tensor(R1_LENGTHS, device="cuda")
    B, L = len(R1_LENGTHS), max(R1_LENGTHS)
    mask = torch.arange(L, device="cuda")[None] < lens[:, None]
    dims = cfg.feature_dims()
    g = torch.Generator().manual_seed(1)
    feats = {m: (torch.randn(B, L, dims[m], generator=g).cuda() * mask[..., None]).to(torch.bfloat16)
             for m in MODALITIES}
    params = [p for e in encs for p in e.parameters()]

    def reference():
        n = mask.sum()
        rec, codes = 0.0, []
        for m, e in zip(MODALITIES, encs):
            z, x_hat, x_std = e(feats[m], mask)
            rec = rec + F.mse_loss(x_hat, x_std, reduction="sum") / (n * x_std.shape[-1])
            codes.append(z)
        return torch.stack(codes), rec

    if provider == "triton":
        rows = pack_rows(lens.cpu(), L).to("cuda")
        impl = TritonImplementation()

        def forward():
            codes, rec = impl.unets(encs, feats, rows.valid[None], lens, rows)
            return codes.stacked, rec
        dz = torch.randn((3, 1, rows.n_rows, cfg.d_model), device="cuda", dtype=torch.bfloat16)
    else:
        forward = torch.compile(reference) if provider == "compile" else reference
        dz = torch.randn((3, B, L, cfg.d_model), device="cuda", dtype=torch.bfloat16)

    def run():
        z, rec = forward()
        return torch.autograd.grad((z * dz).float().sum() + rec, params)
    d, n_valid = cfg.d_model, sum(R1_LENGTHS)
    per_row = sum(dims[m] * 2 * d * 3 + 2 * d * d * 3 + d * 2 * d * 3 + 4 * d * dims[m] for m in MODALITIES)
    flops = 3 * 2.0 * n_valid * per_row  # forward and two backward GEMMs per layer, valid rows
    row = dict(op="unets", shape="iemocap-d1024-R1", mode="fwd+bwd", dtype="bf16", provider=provider)
    record(run, row, flops=flops)
    record_kernels(run, row, flops=flops)

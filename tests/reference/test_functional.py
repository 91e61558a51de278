import math

import pytest
import torch
import torch.nn.functional as F

from cmath_fast.reference import (cross_modal_attention_ref, gaussian_kl, poe_fusion_ref,
                                  variational_fusion_ref)
from tests.helpers import assert_close


def _streams(B, Lq, lks, H, dh, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Lq, H, dh, generator=g, dtype=dtype)
    ks = [torch.randn(B, lk, H, dh, generator=g, dtype=dtype) for lk in lks]
    vs = [torch.randn(B, lk, H, dh, generator=g, dtype=dtype) for lk in lks]
    return q, ks, vs


@pytest.mark.parametrize("lks", [(5,), (5, 3), (7, 1, 4)])
def test_attention_matches_sdpa_per_stream(lks):
    B, Lq, H, dh = 3, 6, 2, 8
    q, ks, vs = _streams(B, Lq, lks, H, dh)
    q_len = torch.tensor([6, 2, 4])
    kv_len = [torch.tensor([lk, max(lk - 2, 1), 1]) for lk in lks]
    gates = torch.rand(B, Lq, len(lks), H, dtype=torch.float64)
    out = cross_modal_attention_ref(q, ks, vs, q_len, kv_len, gates=gates)
    assert out.shape == (B, Lq, len(lks), H, dh)
    for s in range(len(lks)):
        keep = torch.arange(lks[s])[None, :] < kv_len[s][:, None]  # (B, Lk)
        ref = F.scaled_dot_product_attention(
            q.transpose(1, 2), ks[s].transpose(1, 2), vs[s].transpose(1, 2),
            attn_mask=keep[:, None, None, :]).transpose(1, 2)  # (B, Lq, H, dh)
        ref = ref * gates[:, :, s, :, None]
        ref = ref * (torch.arange(Lq)[None, :] < q_len[:, None])[:, :, None, None]
        assert_close(out[:, :, s], ref, atol=1e-10, name=f"stream {s}")


def test_attention_empty_stream_and_padded_rows_are_zero():
    q, ks, vs = _streams(2, 4, (3, 3), 1, 4)
    q_len = torch.tensor([4, 2])
    kv_len = [torch.tensor([3, 0]), torch.tensor([0, 3])]
    q.requires_grad_(True)
    out = cross_modal_attention_ref(q, ks, vs, q_len, kv_len)
    assert torch.isfinite(out).all()
    assert out[1, :, 0].abs().max() == 0, "batch row 1 has no valid key in stream 0"
    assert out[0, :, 1].abs().max() == 0, "batch row 0 has no valid key in stream 1"
    assert out[1, 2:].abs().max() == 0, "padded query rows must be zero"
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_attention_joint_softmax_over_union():
    B, Lq, H, dh = 2, 3, 2, 4
    q, ks, vs = _streams(B, Lq, (4, 2), H, dh)
    q_len = torch.tensor([3, 3])
    kv_len = [torch.tensor([4, 2]), torch.tensor([2, 1])]
    out = cross_modal_attention_ref(q, ks, vs, q_len, kv_len, joint=True)
    keep = torch.cat([torch.arange(4)[None] < kv_len[0][:, None],
                      torch.arange(2)[None] < kv_len[1][:, None]], dim=1)
    k = torch.cat(ks, 1).transpose(1, 2)
    v = torch.cat(vs, 1).transpose(1, 2)
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=keep[:, None, None, :])
    assert_close(out.sum(dim=2), ref.transpose(1, 2), atol=1e-10, name="joint sum over streams")


def test_attention_dropout_mask_multiplies_probabilities():
    q, ks, vs = _streams(1, 3, (4,), 1, 4)
    lens = torch.tensor([3])
    mask = [torch.zeros(1, 1, 3, 4, dtype=torch.float64)]
    out = cross_modal_attention_ref(q, ks, vs, lens, [torch.tensor([4])], dropout_mask=mask)
    assert out.abs().max() == 0
    mask = [torch.ones(1, 1, 3, 4, dtype=torch.float64)]
    plain = cross_modal_attention_ref(q, ks, vs, lens, [torch.tensor([4])])
    assert_close(cross_modal_attention_ref(q, ks, vs, lens, [torch.tensor([4])], dropout_mask=mask),
                 plain, atol=0, name="all-keep mask")


@pytest.mark.parametrize("joint", [False, True])
def test_attention_gradcheck(joint):
    q, ks, vs = _streams(2, 3, (4, 2), 2, 3)
    gates = torch.rand(2, 3, 2, 2, dtype=torch.float64)
    gates[0, 1, 1, 0] = 0.0
    q_len = torch.tensor([3, 2])
    kv_len = [torch.tensor([4, 1]), torch.tensor([0, 2])]
    inputs = [t.requires_grad_(True) for t in [q, *ks, *vs, gates]]

    def fn(q, k0, k1, v0, v1, g):
        return cross_modal_attention_ref(q, [k0, k1], [v0, v1], q_len, kv_len, gates=g, joint=joint)

    assert torch.autograd.gradcheck(fn, inputs)


def test_variational_fusion_closed_form_and_clamp():
    g = torch.Generator().manual_seed(1)
    N, d_in, dz = 5, 7, 3
    e = torch.randn(N, d_in, generator=g, dtype=torch.float64)
    w = torch.randn(2 * dz, d_in, generator=g, dtype=torch.float64) * 4
    b = torch.randn(2 * dz, generator=g, dtype=torch.float64)
    eps = torch.randn(N, dz, generator=g, dtype=torch.float64)
    rows = torch.tensor([True, True, False, True, True])
    z, kl = variational_fusion_ref(e, w, b, eps=eps, row_mask=rows)
    h = e @ w.T + b
    mu, lv = h[:, :dz], h[:, dz:].clamp(-10, 10)
    assert (h[:, dz:].abs() > 10).any(), "the test must drive logvar past the clamp"
    assert_close(z, mu + torch.exp(lv / 2) * eps, atol=1e-12, name="z")
    # KL of N(mu, sigma^2) against N(0, 1), per dimension: log(1/sigma) + (sigma^2 + mu^2)/2 - 1/2
    closed = (-0.5 * lv + 0.5 * (lv.exp() + mu ** 2) - 0.5).sum(-1) * rows
    assert_close(kl, closed, atol=1e-9, rtol=1e-12, name="kl")
    z_eval, _ = variational_fusion_ref(e, w, b, training=False)
    assert_close(z_eval, mu, atol=0, name="eval z")


def test_variational_fusion_gradcheck_with_clamp():
    g = torch.Generator().manual_seed(2)
    e = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(4, 5, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(4, 2, generator=g, dtype=torch.float64)
    rows = torch.tensor([True, False, True, True])

    def fn(e, w, b):
        z, kl = variational_fusion_ref(e, w, b, eps=eps, row_mask=rows, logvar_clamp=2.0)
        return z, kl

    assert torch.autograd.gradcheck(fn, (e, w, b))


def test_poe_closed_form_and_dominant_expert():
    g = torch.Generator().manual_seed(3)
    M, N, dz = 3, 4, 5
    mu = torch.randn(M, N, dz, generator=g, dtype=torch.float64)
    lv = torch.randn(M, N, dz, generator=g, dtype=torch.float64)
    z, kl = poe_fusion_ref(mu, lv, training=False)
    prec = 1 + sum(torch.exp(-lv[m]) for m in range(M))
    mean = sum(mu[m] / torch.exp(lv[m]) for m in range(M)) / prec
    assert_close(z, mean, atol=1e-12, name="poe mean")
    assert_close(kl, gaussian_kl(mean, -torch.log(prec)), atol=1e-12, name="poe kl")
    lv2 = lv.clone()
    lv2[1] = -10.0  # expert 1 is (almost) certain: it dominates the product
    z2, _ = poe_fusion_ref(mu, lv2, training=False)
    assert_close(z2, mu[1], atol=1e-3, name="dominant expert")


def test_poe_gradcheck():
    g = torch.Generator().manual_seed(4)
    mu = torch.randn(2, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    lv = torch.randn(2, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(3, 2, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda m, v: poe_fusion_ref(m, v, eps=eps, row_mask=torch.tensor([True, False, True])),
        (mu, lv))


def test_gaussian_kl_is_zero_at_prior_and_positive_elsewhere():
    assert gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)).abs().max() == 0
    kl = gaussian_kl(torch.randn(100, 4), torch.randn(100, 4))
    assert (kl > 0).all()
    assert math.isfinite(kl.sum().item())


@pytest.mark.parametrize("bad, match", [
    (dict(gates=torch.ones(2, 3, 5, 2)), "gates: expected shape"),
    (dict(q_lengths=torch.tensor([1.0, 2.0])), "q_lengths: expected an integer tensor"),
    (dict(q_lengths=torch.tensor([4, 1])), r"q_lengths: expected values in \[0, 3\]"),
    (dict(kv_lengths=[torch.tensor([-1, 1]), torch.tensor([1, 1])]), r"kv_lengths\[0\]"),
    (dict(ks=[torch.randn(2, 4, 2, 5), torch.randn(2, 2, 2, 3)]), r"ks\[0\]: expected shape"),
])
def test_attention_bad_inputs(bad, match):
    q, ks, vs = _streams(2, 3, (4, 2), 2, 3, dtype=torch.float32)
    args = dict(q=q, ks=ks, vs=vs, q_lengths=torch.tensor([3, 2]),
                kv_lengths=[torch.tensor([4, 1]), torch.tensor([2, 2])])
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        cross_modal_attention_ref(**args)


def test_fusion_bad_inputs():
    e = torch.randn(4, 5)
    with pytest.raises(ValueError, match="first dim must be even"):
        variational_fusion_ref(e, torch.randn(5, 5), None)
    with pytest.raises(ValueError, match=r"row_mask: expected shape \(4,\)"):
        variational_fusion_ref(e, torch.randn(4, 5), None, row_mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="logvar: expected shape"):
        poe_fusion_ref(torch.randn(2, 3, 4), torch.randn(2, 3, 5))

import itertools
import json

import pytest
import torch

from cmath_fast import CMATH, CMATHConfig
from cmath_fast.backend import BackendUnavailableError
from tests.helpers import assert_close, make_batch

SWITCHES = {
    "cross_gate": ["gate", "sum"],
    "fusion": ["gaussian", "poe", "concat"],
    "centrals": [("t", "a", "v"), ("t",), ("a", "v")],
    "reconstruction": [True, False],
    "aux_self_attention": [False, True],
}
AWKWARD_LENGTHS = [5, 0, 1, 3]


def _switch_configs():
    for key, values in SWITCHES.items():
        for value in values:
            yield pytest.param({key: value}, id=f"{key}={value}")
    yield pytest.param({"num_layers": 2, "attn_dropout": 0.2}, id="layers=2,attn_dropout")


@pytest.mark.parametrize("overrides", list(_switch_configs()))
def test_shapes_and_no_nan_for_every_switch(overrides):
    cfg = CMATHConfig.tiny(**overrides)
    model = CMATH(cfg, backend="torch")
    text, audio, visual, speakers, lens, labels = make_batch(cfg, AWKWARD_LENGTHS)
    out = model(text, audio, visual, speakers, lens)
    B, L = len(AWKWARD_LENGTHS), max(AWKWARD_LENGTHS)
    assert out.logits.shape == (B, L, cfg.num_classes)
    assert set(out.fine_logits) == set(cfg.centrals) == set(out.fine)
    for c in cfg.centrals:
        assert out.fine_logits[c].shape == (B, L, cfg.num_classes)
        assert out.fine[c].shape == (B, L, cfg.d_model)
    assert out.coarse.shape == (B, L, cfg.d_model)
    assert out.kl.shape == (B, L)
    total, terms = model.loss(out, labels, epoch=1)
    total.backward()
    tensors = [out.logits, out.coarse, out.kl, total, *out.fine.values(), *out.fine_logits.values()]
    assert all(torch.isfinite(t).all() for t in tensors)
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"


@pytest.mark.parametrize("preset", ["iemocap", "meld"])
def test_full_size_presets(preset):
    cfg = CMATHConfig.preset(preset)
    model = CMATH(cfg, backend="torch").eval()
    text, audio, visual, speakers, lens, _ = make_batch(cfg, [3, 1])
    with torch.no_grad():
        out = model(text, audio, visual, speakers, lens)
    assert out.logits.shape == (2, 3, len(cfg.class_names))
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("overrides", [{}, {"fusion": "poe"}, {"aux_self_attention": True,
                                                              "cross_gate": "sum"}])
def test_padding_invariance(overrides):
    cfg = CMATHConfig.tiny(**overrides)
    model = CMATH(cfg, backend="torch").eval()
    lengths = [4, 1, 6, 0]
    text, audio, visual, speakers, lens, _ = make_batch(cfg, lengths)
    ref = model(text, audio, visual, speakers, lens)
    # garbage in the padded positions and 3 extra padded steps
    g = torch.Generator().manual_seed(9)
    t2, a2, v2, s2, _, _ = make_batch(cfg, lengths, max_len=9)
    mask = (torch.arange(9)[None] < lens[:, None])
    noisy = []
    for clean, padded in ((text, t2), (audio, a2), (visual, v2)):
        garbage = torch.randn(padded.shape, generator=g) * 100
        x = torch.where(mask[..., None], torch.nn.functional.pad(clean, (0, 0, 0, 3)), garbage)
        noisy.append(x)
    spk = torch.where(mask, torch.nn.functional.pad(speakers, (0, 3)), torch.full_like(s2, 77))
    out = model(*noisy, spk, lens)
    valid = mask[:, :6]
    assert_close(out.logits[:, :6][valid], ref.logits[valid], atol=1e-5, name="logits")
    for c in cfg.centrals:
        assert_close(out.fine[c][:, :6][valid], ref.fine[c][valid], atol=1e-5, name=f"F_{c}")
    assert_close(out.rec_loss, ref.rec_loss, atol=1e-4, name="rec loss")
    assert out.logits[~mask].abs().max() == 0, "padded logits must be zero"


def test_loss_terms_finite_and_positive():
    cfg = CMATHConfig.tiny()
    model = CMATH(cfg, backend="torch")
    text, audio, visual, speakers, lens, labels = make_batch(cfg, [6, 3, 4])
    _, terms = model.loss(model(text, audio, visual, speakers, lens), labels, epoch=5)
    for key in ("ce", "fine_ce", "kd_logit", "kd_feat", "rec", "kl", "total"):
        v = float(terms[key])
        assert v > 0 and torch.isfinite(terms[key]), f"{key} = {v}"


def test_beta_warmup_and_class_weights():
    cfg = CMATHConfig.tiny(beta=0.5, beta_warmup_epochs=4, class_weights=[1, 2, 3, 4])
    model = CMATH(cfg, backend="torch")
    assert [model.beta_at(e) for e in (0, 2, 4, 9)] == [0.0, 0.25, 0.5, 0.5]
    assert model.beta_at(None) == 0.5
    text, audio, visual, speakers, lens, labels = make_batch(cfg, [5, 2])
    out = model.eval()(text, audio, visual, speakers, lens)
    _, weighted = model.loss(out, labels)
    model.class_weights = None
    _, plain = model.loss(out, labels)
    assert float(weighted["ce"]) != pytest.approx(float(plain["ce"]))


def test_teacher_detach_switch():
    """With the teacher detached, the logit distillation sends no gradient to the coarse head."""
    cfg = CMATHConfig.tiny(gamma_fine=0, gamma_feat=0, lambda_rec=0, beta=0)
    text, audio, visual, speakers, lens, labels = make_batch(cfg, [4, 3])

    def coarse_grad(**changes):
        torch.manual_seed(0)
        model = CMATH(cfg.replace(**changes), backend="torch").eval()
        total, _ = model.loss(model(text, audio, visual, speakers, lens), labels)
        total.backward()
        return model.coarse_head.weight.grad

    ce_only = coarse_grad(gamma_kd=0.0)
    assert_close(coarse_grad(detach_teacher=True), ce_only, atol=1e-7, name="detached")
    assert (coarse_grad(detach_teacher=False) - ce_only).abs().max() > 1e-4


def test_model_can_learn_one_batch():
    torch.manual_seed(0)
    cfg = CMATHConfig.tiny(dropout=0.0)
    model = CMATH(cfg, backend="torch")
    text, audio, visual, speakers, lens, labels = make_batch(cfg, [8, 6, 5, 3])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for step in range(200):
        out = model(text, audio, visual, speakers, lens)
        total, terms = model.loss(out, labels, epoch=step)
        first = float(terms["ce"]) if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    assert float(terms["ce"]) < 0.05 < first, f"CE went from {first} to {float(terms['ce'])}"


def test_state_dict_and_config_round_trip(tmp_path):
    cfg = CMATHConfig.tiny(fusion="poe", centrals=("t", "v"), class_weights=[1, 1, 2, 2])
    again = CMATHConfig.from_json(cfg.to_json())
    assert again == cfg
    model = CMATH(cfg, backend="torch").eval()
    with torch.no_grad():
        model.encoders["t"].feat_mean.fill_(0.3)
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    clone = CMATH(again, backend="torch").eval()
    clone.load_state_dict(torch.load(path, weights_only=True))
    batch = make_batch(cfg, [4, 2])
    assert_close(clone(*batch[:5]).logits, model(*batch[:5]).logits, atol=0, name="logits")


@pytest.mark.parametrize("preset", ["iemocap", "meld", "tiny"])
def test_presets(preset):
    cfg = CMATHConfig.preset(preset)
    assert CMATHConfig.from_dict(json.loads(cfg.to_json())) == cfg
    if preset == "iemocap":
        assert (cfg.text_dim, cfg.audio_dim, cfg.visual_dim, cfg.num_speakers) == (1024, 1582, 342, 2)
        assert cfg.class_names == ("hap", "sad", "neu", "ang", "exc", "fru")
    if preset == "meld":
        assert (cfg.audio_dim, cfg.num_speakers, cfg.num_classes, cfg.tau) == (300, 9, 7, 8.0)


# ---------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def tiny_model():
    return CMATH(CMATHConfig.tiny(), backend="torch")


def _bad_cases():
    cfg = CMATHConfig.tiny()
    t, a, v, s, lens, _ = make_batch(cfg, [4, 2])
    yield "audio dim", (t, torch.randn(2, 4, 7), v, s, lens), r"audio: expected feature dim 20 \(preset 'tiny'\), got 7"
    yield "visual batch", (t, a, torch.randn(3, 4, 12), s, lens), r"visual: expected batch and length"
    yield "text length", (torch.randn(2, 5, 24), a, v, s, lens), r"audio: expected batch and length"
    yield "negative length", (t, a, v, s, torch.tensor([4, -1])), r"lengths: expected values in \[0, 4\]"
    yield "length > L", (t, a, v, s, torch.tensor([5, 1])), r"lengths: expected values in \[0, 4\]"
    yield "float lengths", (t, a, v, s, lens.float()), "lengths: expected an integer tensor"
    yield "speaker range", (t, a, v, torch.full_like(s, 2), lens), r"speakers: expected values in \[0, 1\]"
    yield "int features", (t.long(), a, v, s, lens), "text: expected a floating-point tensor"


@pytest.mark.parametrize("args, match", [pytest.param(a, m, id=i) for i, a, m in _bad_cases()])
def test_bad_inputs(tiny_model, args, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tiny_model(*args)


def test_bad_labels(tiny_model):
    cfg = tiny_model.cfg
    t, a, v, s, lens, labels = make_batch(cfg, [4, 2])
    out = tiny_model(t, a, v, s, lens)
    labels[1, 3] = 99  # padded position: ignored
    tiny_model.loss(out, labels)
    labels[0, 0] = 4
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 3\]"):
        tiny_model.loss(out, labels)
    with pytest.raises(ValueError, match="labels: expected shape"):
        tiny_model.loss(out, labels[:, :2])


@pytest.mark.parametrize("field, value, match", [
    ("fusion", "mean", "CMATHConfig.fusion: expected one of"),
    ("cross_gate", "max", "CMATHConfig.cross_gate"),
    ("centrals", ("t", "x"), "CMATHConfig.centrals"),
    ("num_heads", 5, "divisible by num_heads"),
    ("dropout", 1.0, "CMATHConfig.dropout"),
    ("rec_kernel_size", 2, "odd kernel"),
])
def test_bad_config(field, value, match):
    with pytest.raises(ValueError, match=match):
        CMATHConfig.tiny(**{field: value})
    with pytest.raises(ValueError, match="unknown field"):
        CMATHConfig.from_dict({"no_such_field": 1})


def test_backend_selection(monkeypatch):
    cfg = CMATHConfig.tiny()
    assert CMATH(cfg).backend in ("torch", "triton")
    assert CMATH(cfg, backend="torch").backend == "torch"
    with pytest.raises(ValueError, match=r"backend: expected one of \('auto', 'torch', 'triton'\), got 'cuda'"):
        CMATH(cfg, backend="cuda")
    monkeypatch.setenv("CMATH_FAST_BACKEND", "fast")
    with pytest.raises(ValueError, match="environment variable CMATH_FAST_BACKEND"):
        CMATH(cfg)
    monkeypatch.setenv("CMATH_FAST_BACKEND", "torch")
    assert CMATH(cfg, backend="triton").backend == "torch"


def test_triton_backend_refused_with_reason(monkeypatch):
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else find_spec(name, *a))
    with pytest.raises(BackendUnavailableError, match="triton is not installed"):
        CMATH(CMATHConfig.tiny(), backend="triton")


def test_all_switch_combinations_build():
    """Every gating and fusion switch builds the modules it names (and only those), and runs."""
    batch = make_batch(CMATHConfig.tiny(), [3, 1])
    for gate, fusion in itertools.product(SWITCHES["cross_gate"], SWITCHES["fusion"]):
        model = CMATH(CMATHConfig.tiny(cross_gate=gate, fusion=fusion), backend="torch")
        attn = model.cma["t"].layers[0].attn
        assert attn.gated == (gate == "gate") and hasattr(attn, "w_g") == (gate == "gate"), (gate, fusion)
        fusion_module = model.fusion
        assert fusion_module.kind == fusion
        assert hasattr(fusion_module, "experts") == (fusion == "poe"), (gate, fusion)
        assert hasattr(fusion_module, "w_musigma") == (fusion == "gaussian"), (gate, fusion)
        out = model(*batch[:5])
        assert out.logits.shape == (2, 3, model.cfg.num_classes) and torch.isfinite(out.logits).all()
        if fusion == "concat":
            assert torch.count_nonzero(out.kl) == 0

"""The capability rules (``cmath_fast.backend``) on mocked devices: which backend and precision
``auto`` picks on a T4, an A100, an RTX 4090 and an AMD GPU, the warnings and errors for explicit
choices, and the kernels' tile family of each architecture."""

import warnings

import pytest
import torch

from cmath_fast import backend
from cmath_fast.kernels import configs


def _mock_gpu(monkeypatch, cap, name, hip=None, bf16=True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: cap)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
    # torch.cuda.is_bf16_supported() says True on a T4 (emulated): the rules must not ask it there
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    monkeypatch.setattr(torch.version, "hip", hip)
    configs._family.cache_clear()


@pytest.fixture(autouse=True)
def _clear_family_cache():
    yield
    configs._family.cache_clear()


@pytest.mark.parametrize("cap, family", [
    ((7, 5), "sm75"), ((8, 0), "sm80"), ((8, 6), "sm86"), ((8, 7), "sm80"), ((8, 9), "sm86"),
    ((9, 0), "sm90"), ((10, 0), "sm100"), ((10, 3), "sm100"), ((12, 0), "sm86"), ((12, 1), "sm86"),
])
def test_family_of_maps_each_architecture_to_the_nearest_family_with_rules(cap, family):
    assert configs.family_of(*cap) == family


def test_every_family_with_rules_has_a_shared_memory_limit():
    ruled = {configs.family_of(*cap) for cap in [(8, 0), (8, 6), (8, 7), (8, 9), (9, 0), (10, 0), (12, 0)]}
    assert ruled == set(configs.FAMILY_SHARED_MEMORY)


def test_t4_auto_runs_the_reference_in_fp16_mixed(monkeypatch):
    monkeypatch.delenv("CMATH_FAST_BACKEND", raising=False)
    _mock_gpu(monkeypatch, (7, 5), "Tesla T4")
    rules = backend.device_rules()
    assert (rules.platform, rules.family, rules.kernels_tested, rules.bf16) == ("cuda", "sm75", False, False)
    assert rules.precision == "fp16-mixed" and "gradient scaler" in rules.precision_reason
    name, why = backend.resolve_backend("auto")
    assert name == "torch" and "7.5 is below 8.0" in why
    from cmath_fast.step import default_precision
    assert default_precision("cuda") == "fp16-mixed"


def test_t4_explicit_triton_warns_in_one_line(monkeypatch):
    monkeypatch.delenv("CMATH_FAST_BACKEND", raising=False)
    _mock_gpu(monkeypatch, (7, 5), "Tesla T4")
    with pytest.warns(backend.UntestedDeviceWarning) as rec:
        assert backend.resolve_backend("triton")[0] == "triton"
    msg = str(rec[0].message)
    assert "\n" not in msg and "Tesla T4 (sm_75" in msg and "8.0" in msg


@pytest.mark.parametrize("precision", ["bf16", "bf16-mixed"])
def test_t4_explicit_bf16_is_a_one_line_error(monkeypatch, precision):
    _mock_gpu(monkeypatch, (7, 5), "Tesla T4")
    with pytest.raises(ValueError, match=rf"--precision {precision}: Tesla T4 .* has no native bf16") as err:
        backend.check_device_precision(precision, "cuda:0")
    assert "\n" not in str(err.value)
    backend.check_device_precision("fp16-mixed", "cuda:0")
    from cmath_fast.training.options import TrainOptions
    with pytest.raises(ValueError, match="no native bf16"):
        TrainOptions(device="cuda:0", precision=precision).validate()


@pytest.mark.parametrize("cap, name, family", [((8, 0), "NVIDIA A100-SXM4-80GB", "sm80"),
                                                ((8, 9), "NVIDIA GeForce RTX 4090", "sm86"),
                                                ((9, 0), "NVIDIA H200", "sm90")])
def test_ampere_and_newer_auto_runs_the_kernels_in_bf16_mixed(monkeypatch, cap, name, family):
    monkeypatch.delenv("CMATH_FAST_BACKEND", raising=False)
    _mock_gpu(monkeypatch, cap, name)
    rules = backend.device_rules("cuda:0")
    assert (rules.kernels_tested, rules.bf16, rules.precision, rules.family) == (True, True, "bf16-mixed", family)
    assert backend.resolve_backend("auto")[0] == "triton"
    assert configs.gpu_family() == family
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend.resolve_backend("triton")
        backend.check_device_precision("bf16-mixed", "cuda")


def test_rocm_is_never_an_nvidia_family(monkeypatch):
    monkeypatch.delenv("CMATH_FAST_BACKEND", raising=False)
    # an MI250 reports its gfx version (9, 0) where CUDA would report a compute capability
    _mock_gpu(monkeypatch, (9, 0), "AMD Instinct MI250X", hip="6.2", bf16=True)
    rules = backend.device_rules()
    assert (rules.platform, rules.family, rules.capability) == ("rocm", "", None)
    assert configs.gpu_family() == ""
    name, why = backend.resolve_backend("auto")
    assert name == "torch" and "ROCm" in why
    with pytest.warns(backend.UntestedDeviceWarning, match="ROCm"):
        backend.resolve_backend("triton")


def test_env_report_shows_the_rules(monkeypatch):
    monkeypatch.delenv("CMATH_FAST_BACKEND", raising=False)
    _mock_gpu(monkeypatch, (7, 5), "Tesla T4")
    from cmath_fast.info import report
    rows = dict(report())
    assert rows["gpu"] == "Tesla T4 (sm_75, family sm75)"
    assert rows["fused kernels here"].startswith("untested: compute capability 7.5")
    assert rows["bf16"] == "not native"
    assert rows["precision auto ->"].startswith("fp16-mixed")
    assert rows["backend auto ->"].startswith("torch (auto: compute capability 7.5")

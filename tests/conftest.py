import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") == "1":
    from tests import interpreter_rounding
    INTERPRETER_ROUNDING = interpreter_rounding.install()  # bf16 stores round as on a GPU
else:
    INTERPRETER_ROUNDING = "not needed (no interpreter)"


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped on CPU with the reason)")
    config.addinivalue_line("markers", "slow: longer CPU tests")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is available on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_and_clean_env(monkeypatch):
    torch.manual_seed(0)
    monkeypatch.delenv("CMATH_FAST_BACKEND", raising=False)
    yield


@pytest.fixture
def interpreter():
    """True when Triton kernels run in the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"

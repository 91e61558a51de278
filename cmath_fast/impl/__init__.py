"""How a CMATH model computes: one small interface (``Implementation``), two implementations.

- ``torch_impl.TorchImplementation``: the reference layers' own forwards, readable as the paper.
- ``triton_impl.TritonImplementation``: the fused Triton ops, every central's CMA layer in one
  attention launch, batched GEMMs; same modules, same state_dict, same results.

The model (``cmath_fast.model.CMATH``) owns the modules and calls ``encode``, ``cma``, ``fuse``
and ``heads`` of the implementation its backend names.
"""

from __future__ import annotations

from .base import Implementation, UnsupportedConfigError


def get_implementation(name: str, cfg=None, fused=None) -> Implementation:
    """The implementation of a concrete backend ("torch" or "triton"); with ``cfg``, refused with
    every reason when it cannot run that config. ``fused``: the triton implementation's components
    that run fused (``cmath_fast.components``; default all; the reference fuses none)."""
    if name == "torch":
        from .torch_impl import TorchImplementation
        impl = TorchImplementation()
    elif name == "triton":
        from ..components import COMPONENTS
        from .triton_impl import TritonImplementation
        impl = TritonImplementation(COMPONENTS if fused is None else fused)
    else:
        raise ValueError(f"implementation: expected 'torch' or 'triton', got {name!r}")
    if cfg is not None:
        reasons = impl.not_supported_reasons(cfg)
        if reasons:
            raise UnsupportedConfigError(f"backend {name!r} cannot run this config: " + "; ".join(reasons)
                                         + "; use backend='torch'")
    return impl


__all__ = ["Implementation", "UnsupportedConfigError", "get_implementation"]

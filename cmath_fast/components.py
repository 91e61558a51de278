"""The fused implementation's components, each of which can be switched off on its own.

``CMATH(cfg, backend="triton", fused=...)``, ``--fused LIST`` and the environment variable
``CMATH_FAST_FUSED`` (which wins over the argument, as ``CMATH_FAST_BACKEND`` does) take any
subset of ``COMPONENTS`` as a comma-separated list ("all" or unset: every one; "none" or empty:
the reference's computation through the fused implementation's seam). A component switched off
runs the reference's code for it, on the same modules and state_dict:

- attention: the cross-modal attention kernel -> ``cross_modal_attention_ref`` (on packed rows,
  each dialogue's rows are gathered into the padded layout and scattered back);
- fusion: the variational / PoE fusion kernels -> the reference ``VariationalFusion`` (row-wise:
  runs on packed rows as they are);
- unets: the grouped row-convolution U-Nets -> each modality's reference U-Net on the padded
  features (with packed rows on, its codes are then packed);
- norms: the stacked LayerNorm kernel -> each module's own ``nn.LayerNorm`` (row-wise);
- loss: the fused loss kernels -> ``losses.cmath_loss`` (row-wise over the valid rows);
- packing: packed rows -> the padded layout for every per-utterance layer.

The model benchmarks and ``cmath-fast doctor`` take the set too, so one run can show what each
component buys, and a component that fails on a GPU can be avoided without losing the others.
"""

from __future__ import annotations

import os
from typing import FrozenSet, Iterable, Optional, Union

COMPONENTS = ("attention", "fusion", "unets", "norms", "loss", "packing")
ENV_VAR = "CMATH_FAST_FUSED"

# Which component each Triton kernel (by name) belongs to; packing has no kernel of its own.
KERNEL_PREFIXES = {
    "attention": ("_cma_",),
    "fusion": ("_vf_", "_poe_"),
    "unets": ("_row_conv_", "_tap_major", "_standardise", "_rec_"),
    "norms": ("_ln_",),
    "loss": ("_loss_",),
}


def component_of_kernel(name: str) -> Optional[str]:
    """The component a kernel name belongs to (None for an unknown name)."""
    for component, prefixes in KERNEL_PREFIXES.items():
        if name.startswith(prefixes):
            return component
    return None


def parse_fused(value: Union[str, Iterable[str], None], source: str = "fused") -> FrozenSet[str]:
    """A set of components from "all", "none", "" or a comma-separated list (or an iterable of
    names); an unknown name is a one-line error naming ``source``."""
    if value is None:
        return frozenset(COMPONENTS)
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "all":
            return frozenset(COMPONENTS)
        if text in ("", "none"):
            return frozenset()
        names = [n.strip() for n in text.split(",") if n.strip()]
    else:
        names = list(value)
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise ValueError(f"{source}: unknown component(s) {', '.join(map(repr, unknown))}; expected a "
                         f"comma-separated subset of {', '.join(COMPONENTS)}, or all, or none")
    return frozenset(names)


def resolve_fused(fused=None, source: str = "fused") -> FrozenSet[str]:
    """The components to run fused: ``CMATH_FAST_FUSED`` when set, else ``fused`` (default all;
    ``source`` names it in an error)."""
    env = os.environ.get(ENV_VAR)
    if env is not None:
        return parse_fused(env, f"environment variable {ENV_VAR}")
    return parse_fused(fused, source)


def format_fused(components: Iterable[str]) -> str:
    """"all", "none" or the components in ``COMPONENTS`` order, comma-separated."""
    chosen = [c for c in COMPONENTS if c in set(components)]
    if len(chosen) == len(COMPONENTS):
        return "all"
    return ",".join(chosen) if chosen else "none"


def without(component: str, components: Iterable[str] = COMPONENTS) -> str:
    """The switch that runs everything in ``components`` fused except ``component``."""
    return f"--fused {format_fused(set(components) - {component})} (or {ENV_VAR}=" \
           f"{format_fused(set(components) - {component})})"


__all__ = ["COMPONENTS", "ENV_VAR", "component_of_kernel", "format_fused", "parse_fused", "resolve_fused",
           "without"]

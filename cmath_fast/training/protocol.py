"""Training protocols: what a run changes to be comparable with a table.

- ``cmath-fast`` (default): the config and options as given — class weights none unless set, logit
  distillation scaled by tau^2 with the teacher detached, gradients clipped at norm 5, the model
  selected on a seeded validation split of the training dialogues.
- ``lineage``: what SDT (the closest released relative of CMATH) does to produce its tables:
  inverse-frequency class weights on IEMOCAP (always; none on MELD or other data), logit
  distillation without tau^2 and without detaching the teacher, no gradient clipping, the
  best-test-epoch selection (optimistic).

A setting the user gives explicitly (a flag or a config field) wins over the protocol's, and the
label printed beside every number says so.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, List, Tuple

from ..config import CMATHConfig
from ..data.dataset import MERData
from .options import TrainOptions

PROTOCOLS = ("cmath-fast", "lineage")

# SDT's IEMOCAP class frequencies in its (and our) class order hap, sad, neu, ang, exc, fru; it
# trains with their inverses whatever its --class-weight flag says.
SDT_IEMOCAP_FREQUENCIES = (0.086747, 0.144406, 0.227883, 0.160585, 0.127711, 0.252668)
SDT_IEMOCAP_CLASS_WEIGHTS = tuple(1.0 / f for f in SDT_IEMOCAP_FREQUENCIES)

# option -> the command-line flag that sets it (for the label)
_FLAGS = {"select_on": "--select-on", "max_grad_norm": "--clip-grad-norm"}


def protocol_settings(name: str, data: MERData) -> Tuple[dict, dict]:
    """(config fields, TrainOptions fields) that the protocol sets on ``data``."""
    if name not in PROTOCOLS:
        raise ValueError(f"--protocol: expected one of {PROTOCOLS}, got {name!r}")
    if name == "cmath-fast":
        return {}, {}
    cfg = {"tau_squared": False, "detach_teacher": False,
           "class_weights": SDT_IEMOCAP_CLASS_WEIGHTS if data.dataset == "iemocap" else None}
    opts = {"max_grad_norm": 0.0, "select_on": "test"}
    return cfg, opts


def apply_protocol(name: str, cfg: CMATHConfig, opts: TrainOptions, data: MERData,
                   explicit: Iterable[str] = ()) -> Tuple[CMATHConfig, TrainOptions]:
    """The config and options of a run under protocol ``name``. ``explicit`` names the config
    fields and options the user gave: those keep the user's value, and are recorded in
    ``opts.protocol_overrides``."""
    explicit = set(explicit)
    cfg_set, opt_set = protocol_settings(name, data)
    overridden: List[str] = []

    def changes(settings: dict, current, shown) -> dict:
        kept = {k for k in settings if k in explicit}
        overridden.extend(shown(k, getattr(current, k)) for k in settings if k in kept)
        return {k: v for k, v in settings.items() if k not in kept}
    cfg_changes = changes(cfg_set, cfg, lambda k, v: f"{k}={v!r}")
    opt_changes = changes(opt_set, opts, lambda k, v: f"{_FLAGS.get(k, k)} {v}")
    return (cfg.replace(**cfg_changes) if cfg_changes else cfg,
            replace(opts, protocol=name, protocol_overrides=tuple(overridden), **opt_changes))


def protocol_label(opts: TrainOptions) -> str:
    """How a number from this run is labelled: the protocol, its selection, any explicit override."""
    sel = ("best test epoch: optimistic" if opts.select_on == "test"
           else f"selected on a seeded {opts.valid_fraction:.0%} of train")
    label = f"protocol {opts.protocol}, {sel}"
    if opts.protocol_overrides:
        label += "; given explicitly over the protocol: " + ", ".join(opts.protocol_overrides)
    return label

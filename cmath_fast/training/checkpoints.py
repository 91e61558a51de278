"""Checkpoints: safetensors weights with JSON metadata (config, epoch, metrics, optimiser state),
written atomically; loading a model from a run folder or a file."""

from __future__ import annotations

import os
from typing import Dict, Optional

import torch

from ..config import CONFIG_SCHEMA_VERSION, CMATHConfig
from ..io import load_checkpoint, save_checkpoint
from ..model import CMATH

# "cmath-fast-checkpoint-1": the first format; -2 adds "schema_version" (the config schema) and
# guarantees finite weights. Both load.
CHECKPOINT_FORMAT = "cmath-fast-checkpoint-2"
READABLE_FORMATS = ("cmath-fast-checkpoint-1", CHECKPOINT_FORMAT)


def flatten_optimizer(opt: torch.optim.Optimizer):
    sd = opt.state_dict()
    tensors, plain = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim/{idx}/{key}"] = value
            else:
                plain[f"{idx}/{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def unflatten_optimizer(tensors: Dict[str, torch.Tensor], meta: dict) -> dict:
    state: Dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["plain"].items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_model(path: str, model: CMATH, meta: dict, extra: Optional[Dict[str, torch.Tensor]] = None):
    """The model's weights (a DistributedDataParallel wrapper's inner model) and its config."""
    from ..distributed import unwrap
    model = unwrap(model)
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update(extra or {})
    meta = dict(meta, config=model.cfg.to_dict(), format=CHECKPOINT_FORMAT,
                schema_version=CONFIG_SCHEMA_VERSION)
    save_checkpoint(path, tensors, meta)


def check_finite(path: str, tensors: Dict[str, torch.Tensor]) -> None:
    """Refuse a checkpoint with a NaN or inf in any floating tensor, naming the first one."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{path}: tensor {name!r} holds NaN or inf: the checkpoint is corrupt "
                             f"(or was saved from a diverged run)")


def read_checkpoint(path: str):
    """(tensors, metadata, config) of a checkpoint file, checked: a known format, a config this
    version reads, finite weights."""
    tensors, meta = load_checkpoint(path)
    fmt = meta.get("format")
    if fmt not in READABLE_FORMATS:
        raise ValueError(f"{path}: checkpoint format {fmt!r}; this cmath-fast reads {', '.join(READABLE_FORMATS)} "
                         f"(a newer format needs a newer cmath-fast)")
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"{path}: the checkpoint has no config")
    cfg = CMATHConfig.from_dict(meta["config"])
    check_finite(path, tensors)
    return tensors, meta, cfg


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file, or a run folder's best.safetensors. A folder of several seeds is refused
    with the seeds to choose from: which seed evaluates is the user's choice, not seed0's."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "best.safetensors")):
            return os.path.join(path, "best.safetensors")
        seeds = sorted((n for n in os.listdir(path) if n.startswith("seed")
                        and os.path.isfile(os.path.join(path, n, "best.safetensors"))),
                       key=lambda n: int(n[4:]) if n[4:].isdigit() else 0)
        if len(seeds) == 1:
            return os.path.join(path, seeds[0], "best.safetensors")
        if seeds:
            raise ValueError(f"{path}: a run of {len(seeds)} seeds ({', '.join(seeds)}); give one, e.g. "
                             f"--checkpoint {os.path.join(path, seeds[0])}")
        raise FileNotFoundError(f"{path}: no best.safetensors in this folder")
    return path


def load_model(path: str, device: str = "cpu", backend: str = "auto", fused=None):
    """-> (model on ``device`` in eval mode, checkpoint metadata). ``fused``: the triton backend's
    fused components (default all)."""
    path = resolve_checkpoint(path)
    tensors, meta, cfg = read_checkpoint(path)
    model = CMATH(cfg, backend=backend, fused=fused)
    load_weights(model, tensors, path)
    return model.to(device).eval(), meta


def load_weights(model: CMATH, tensors: Dict[str, torch.Tensor], path: str) -> None:
    """The ``model/`` tensors of a checkpoint into ``model``; a mismatch is one line naming it."""
    from ..distributed import unwrap
    model = unwrap(model)
    state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    if state and all(k.startswith("module.") for k in state):  # a DistributedDataParallel's state_dict
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} tensor(s) of another shape, e.g. {wrong[0]!r} "
                         f"{tuple(state[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)}")
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]!r}")
        raise ValueError(f"{path}: the weights do not fit the model's config: " + "; ".join(parts))
    model.load_state_dict(state)

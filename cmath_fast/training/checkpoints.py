"""Checkpoints: safetensors weights with JSON metadata (config, epoch, metrics, optimiser state),
written atomically; loading a model from a run folder or a file."""

from __future__ import annotations

import os
from typing import Dict, Optional

import torch

from ..config import CMATHConfig
from ..io import load_checkpoint, save_checkpoint
from ..model import CMATH

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
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update(extra or {})
    meta = dict(meta, config=model.cfg.to_dict(), format="cmath-fast-checkpoint-1")
    save_checkpoint(path, tensors, meta)


def resolve_checkpoint(path: str) -> str:
    if os.path.isdir(path):
        for name in ("best.safetensors", "seed0/best.safetensors"):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise FileNotFoundError(f"{path}: no best.safetensors in this folder")
    return path


def load_model(path: str, device: str = "cpu", backend: str = "auto"):
    """-> (model on ``device`` in eval mode, checkpoint metadata)."""
    tensors, meta = load_checkpoint(resolve_checkpoint(path))
    if "config" not in meta:
        raise ValueError(f"{path}: the checkpoint has no config")
    cfg = CMATHConfig.from_dict(meta["config"])
    model = CMATH(cfg, backend=backend)
    state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    model.load_state_dict(state)
    return model.to(device).eval(), meta

"""The model config for a data set: a preset, the data's dims, speakers and classes, and the user's
fields; and the check that a checkpoint can read a data set."""

from __future__ import annotations

import json
from typing import List, Optional

from ..config import MODALITIES, MODALITY_NAMES, CMATHConfig
from ..data.dataset import DataError, MERData
from ..data.loaders import KNOWN_VARIANTS

def preset_for(data: MERData, dataset: Optional[str] = None) -> str:
    if dataset:
        return dataset
    name = data.dataset
    if name in ("iemocap", "meld"):
        return name
    if name in ("synthetic-small", "synthetic-missing"):
        return "tiny"
    if name.startswith("synthetic-"):
        return name.split("-", 1)[1]
    return "tiny"


def read_config_file(path: str) -> dict:
    """The config fields of a JSON file (an object of CMATHConfig fields)."""
    try:
        with open(path, encoding="utf-8") as fh:
            fields = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--config {path}: unreadable JSON ({exc})") from None
    if not isinstance(fields, dict):
        raise ValueError(f"--config {path}: expected a JSON object of config fields")
    return fields


def config_for_data(data: MERData, *, dataset: Optional[str] = None, config_file: Optional[str] = None,
                    overrides: Optional[dict] = None) -> (CMATHConfig, List[str]):
    """The model config for ``data``: a preset, the data's dims, speakers and classes, then the
    JSON file's fields and ``overrides``. Returns (config, notes on what differs)."""
    notes = []
    fields = read_config_file(config_file) if config_file else {}
    fields.update(overrides or {})
    preset = preset_for(data, dataset)
    cfg = CMATHConfig.preset(preset)
    dims = data.dims
    base = cfg.feature_dims()
    data_fields = {"text_dim": dims["t"], "audio_dim": dims["a"], "visual_dim": dims["v"],
                   "num_speakers": data.num_speakers, "num_classes": data.num_classes,
                   "class_names": tuple(data.class_names)}
    for m in MODALITIES:
        key = f"{MODALITY_NAMES[m]}_dim"
        if key in fields and fields[key] != dims[m]:
            raise ValueError(f"{MODALITY_NAMES[m]}: the config asks for dim {fields[key]} but the data "
                             f"has {dims[m]}")
        if dims[m] != base[m] and preset in ("iemocap", "meld"):
            hint = KNOWN_VARIANTS.get((preset, m, dims[m]))
            notes.append(f"{MODALITY_NAMES[m]} dim {dims[m]} from the data (the {preset} preset's is "
                         f"{base[m]}{'; likely ' + hint if hint else ''})")
    merged = cfg.to_dict()
    merged.update(data_fields)
    merged.update({k: v for k, v in fields.items() if k not in data_fields or k.endswith("_dim")})
    return CMATHConfig.from_dict(merged), notes


def check_data_matches(cfg: CMATHConfig, data: MERData) -> None:
    """A checkpoint's config against the data it is asked to read: name what differs."""
    dims = data.dims
    for m, want in cfg.feature_dims().items():
        if dims[m] != want:
            hint = KNOWN_VARIANTS.get((data.dataset, m, dims[m])) or KNOWN_VARIANTS.get(
                (cfg.name, m, dims[m]))
            raise DataError(
                f"{MODALITY_NAMES[m]}: the checkpoint expects dim {want} but the data has {dims[m]}"
                + (f" (likely {hint})" if hint else "") + "; use features of the kind it was trained on")
    if data.num_classes != cfg.num_classes:
        raise DataError(f"the checkpoint has {cfg.num_classes} classes but the data has {data.num_classes}")
    if data.num_speakers > cfg.num_speakers:
        raise DataError(f"the checkpoint knows {cfg.num_speakers} speakers but the data has "
                        f"{data.num_speakers}")

"""Model configuration: one dataclass, JSON round trip, dataset presets.

Every choice the paper leaves open and that changes the math is a field here, so that a run can be
matched to the paper's code once it is public. The closing table of the README lists them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

MODALITIES = ("t", "a", "v")

# The default of ``rec_skip`` for new configs; configs saved before the field existed had a skip.
REC_SKIP_DEFAULT = True

# Version of the config's JSON schema, written into every config, checkpoint and run folder. 1: the
# first version (no version field); 2: adds ffn_activation, joint_softmax, rec_skip and this field.
CONFIG_SCHEMA_VERSION = 2

_FLOAT_FIELDS = ("dropout", "attn_dropout", "logvar_clamp", "gamma_fine", "gamma_kd", "gamma_feat",
                 "lambda_rec", "beta", "tau", "lr", "weight_decay")
MODALITY_NAMES = {"t": "text", "a": "audio", "v": "visual"}

IEMOCAP_CLASSES = ("hap", "sad", "neu", "ang", "exc", "fru")
MELD_CLASSES = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")

_CHOICES = {
    "cross_gate": ("gate", "sum"),
    "fusion": ("gaussian", "poe", "concat"),
    "ffn_activation": ("gelu", "gelu_tanh", "relu", "silu"),
}


@dataclass
class CMATHConfig:
    """Hyper-parameters of a CMATH model and its loss.

    Dims of the three modalities (``text_dim``, ``audio_dim``, ``visual_dim``) are the raw feature
    sizes; ``d_model`` is the model width, split into ``num_heads`` heads. ``centrals`` lists the
    modalities that take a turn as the central one of a CMA-Transformer (all three by default).
    """

    name: str = "custom"
    text_dim: int = 1024
    audio_dim: int = 1582
    visual_dim: int = 342
    num_speakers: int = 2
    num_classes: int = 6
    class_names: Optional[Sequence[str]] = None

    d_model: int = 1024
    num_heads: int = 8
    num_layers: int = 1
    ffn_mult: int = 4
    ffn_activation: str = "gelu"
    dropout: float = 0.5
    attn_dropout: float = 0.0
    centrals: Sequence[str] = MODALITIES

    # Modality reconstruction (U-Net of 1D convolutions). ``reconstruction=False`` replaces it by
    # a linear projection with no reconstruction loss (ablation).
    reconstruction: bool = True
    rec_kernel_size: int = 3
    # The decoder concatenates the encoder's first activation (a U-Net skip) before its output
    # convolution. That skip carries the whole input, so with it the reconstruction loss can be met
    # without the code Z; False decodes from Z alone. A config without the field (written before
    # it existed) means True: see from_dict.
    rec_skip: bool = REC_SKIP_DEFAULT

    # CMA-Transformer: "gate" = per-utterance, per-head sigmoid gates on the auxiliary streams
    # computed from the central modality (asymmetric); "sum" = every stream weighted 1 (symmetric).
    cross_gate: str = "gate"
    aux_self_attention: bool = False
    # One softmax over the union of the streams' keys instead of one per stream (ablation).
    joint_softmax: bool = False

    # Variational fusion.
    fusion: str = "gaussian"
    d_z: Optional[int] = None
    logvar_clamp: float = 10.0

    # Loss.
    gamma_fine: float = 1.0
    gamma_kd: float = 1.0
    gamma_feat: float = 0.1
    lambda_rec: float = 0.1
    beta: float = 0.01
    beta_warmup_epochs: int = 10
    tau: float = 1.0
    detach_teacher: bool = True
    tau_squared: bool = True
    class_weights: Optional[Sequence[float]] = None

    # Training defaults (used by the CLI; the model ignores them).
    lr: float = 1e-4
    weight_decay: float = 1e-5
    batch_size: int = 16
    epochs: int = 150

    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.centrals = tuple(self.centrals)
        if self.class_names is not None:
            self.class_names = tuple(self.class_names)
        if self.class_weights is not None:
            self.class_weights = tuple(float(w) for w in self.class_weights)
        if self.d_z is None:
            self.d_z = self.d_model
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        for key in _FLOAT_FIELDS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"CMATHConfig.{key}: expected a finite number, got {value!r}")
        if self.class_weights is not None and not all(math.isfinite(w) and w >= 0 for w in self.class_weights):
            raise ValueError(f"CMATHConfig.class_weights: expected finite weights >= 0, got {self.class_weights!r}")
        for key in ("reconstruction", "aux_self_attention", "joint_softmax", "rec_skip", "detach_teacher",
                    "tau_squared"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"CMATHConfig.{key}: expected true or false, got {getattr(self, key)!r}")
        for key, allowed in _CHOICES.items():
            value = getattr(self, key)
            if value not in allowed:
                raise ValueError(f"CMATHConfig.{key}: expected one of {allowed}, got {value!r}")
        for key in ("text_dim", "audio_dim", "visual_dim", "num_speakers", "num_classes",
                    "d_model", "num_heads", "num_layers", "ffn_mult", "d_z", "rec_kernel_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CMATHConfig.{key}: expected a positive integer, got {value!r}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"CMATHConfig.d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        if self.rec_kernel_size % 2 == 0:
            raise ValueError(
                f"CMATHConfig.rec_kernel_size: expected an odd kernel (keeps one code per utterance), "
                f"got {self.rec_kernel_size}")
        if not self.centrals or any(c not in MODALITIES for c in self.centrals) \
                or len(set(self.centrals)) != len(self.centrals):
            raise ValueError(
                f"CMATHConfig.centrals: expected distinct modalities from {MODALITIES}, "
                f"got {self.centrals!r}")
        for key in ("dropout", "attn_dropout"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"CMATHConfig.{key}: expected a probability in [0, 1), got {value!r}")
        for key in ("gamma_fine", "gamma_kd", "gamma_feat", "lambda_rec", "beta", "logvar_clamp"):
            if getattr(self, key) < 0:
                raise ValueError(f"CMATHConfig.{key}: expected >= 0, got {getattr(self, key)!r}")
        if self.tau <= 0:
            raise ValueError(f"CMATHConfig.tau: expected > 0, got {self.tau!r}")
        if self.lr <= 0:
            raise ValueError(f"CMATHConfig.lr: expected > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"CMATHConfig.weight_decay: expected >= 0, got {self.weight_decay!r}")
        for key in ("epochs", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CMATHConfig.{key}: expected a positive integer, got {value!r}")
        if self.beta_warmup_epochs < 0:
            raise ValueError(
                f"CMATHConfig.beta_warmup_epochs: expected >= 0, got {self.beta_warmup_epochs!r}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"CMATHConfig.class_names: expected {self.num_classes} names, got {len(self.class_names)}")
        if self.class_weights is not None and len(self.class_weights) != self.num_classes:
            raise ValueError(
                f"CMATHConfig.class_weights: expected {self.num_classes} weights, "
                f"got {len(self.class_weights)}")

    # ------------------------------------------------------------------ helpers
    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def feature_dims(self) -> dict:
        return {"t": self.text_dim, "a": self.audio_dim, "v": self.visual_dim}

    def labels(self) -> tuple:
        if self.class_names is not None:
            return tuple(self.class_names)
        return tuple(str(i) for i in range(self.num_classes))

    def replace(self, **changes: Any) -> "CMATHConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        out["schema_version"] = CONFIG_SCHEMA_VERSION
        return out

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "CMATHConfig":
        if not isinstance(data, dict):
            raise TypeError(f"CMATHConfig.from_dict: expected a dict, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("schema_version", 1)
        if not isinstance(version, int) or version > CONFIG_SCHEMA_VERSION:
            raise ValueError(f"CMATHConfig: schema version {version!r} is newer than this cmath-fast reads "
                             f"({CONFIG_SCHEMA_VERSION}); upgrade cmath-fast to read it")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"CMATHConfig: unknown field(s) {unknown}; known fields are {sorted(known)}")
        # Fields added after a config was saved take the value that reproduces what it meant then.
        data = {"rec_skip": True, **data}
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "CMATHConfig":
        return cls.from_dict(json.loads(text))

    # ------------------------------------------------------------------ presets
    @classmethod
    def iemocap(cls, **overrides: Any) -> "CMATHConfig":
        """IEMOCAP (6 classes), SDT's features: RoBERTa 1024, openSMILE 1582, DenseNet 342."""
        base = dict(name="iemocap", text_dim=1024, audio_dim=1582, visual_dim=342, num_speakers=2,
                    num_classes=6, class_names=IEMOCAP_CLASSES, d_model=1024, num_heads=8,
                    dropout=0.5, tau=1.0, lr=1e-4, batch_size=16, epochs=150)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def meld(cls, **overrides: Any) -> "CMATHConfig":
        """MELD (7 classes), SDT's features: RoBERTa 1024, audio 300, DenseNet 342, 9 speakers."""
        base = dict(name="meld", text_dim=1024, audio_dim=300, visual_dim=342, num_speakers=9,
                    num_classes=7, class_names=MELD_CLASSES, d_model=1024, num_heads=8,
                    dropout=0.5, tau=8.0, tau_squared=False, lr=5e-6, batch_size=8, epochs=50)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def tiny(cls, **overrides: Any) -> "CMATHConfig":
        """Small dims for tests and the quick synthetic run (head dim 16, the kernels' minimum)."""
        base = dict(name="tiny", text_dim=24, audio_dim=20, visual_dim=12, num_speakers=2,
                    num_classes=4, d_model=32, num_heads=2, dropout=0.1, d_z=16,
                    beta_warmup_epochs=2, lr=1e-3, batch_size=8, epochs=20)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "CMATHConfig":
        presets = {"iemocap": cls.iemocap, "meld": cls.meld, "tiny": cls.tiny}
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(presets)}")
        return presets[name](**overrides)

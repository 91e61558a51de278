"""What a training run is asked to do (the options saved with it) and how its model is selected."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

SELECTION_TEXT = {
    "valid": "model selected on a seeded validation split of the training dialogues",
    "test": "best-test-epoch protocol of the lineage (model selected on the test split: optimistic)",
}


@dataclass
class TrainOptions:
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-5
    select_on: str = "valid"
    seed: int = 0
    device: str = "cpu"
    backend: str = "auto"
    resume: bool = False
    progress: bool = True
    max_grad_norm: float = 5.0  # 0 = no clipping
    valid_fraction: float = 0.1  # share of the training dialogues held out for selection
    protocol: str = "cmath-fast"
    protocol_overrides: Tuple[str, ...] = ()  # settings given explicitly over the protocol's
    stop_after_epoch: Optional[int] = None  # for tests: simulate an interruption after this epoch

    def validate(self) -> None:
        if self.select_on not in SELECTION_TEXT:
            raise ValueError(f"--select-on: expected 'valid' or 'test', got {self.select_on!r}")
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"--{key.replace('_', '-')}: expected a positive integer, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ValueError(f"--lr: expected > 0, got {self.lr}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0):
            raise ValueError(f"--clip-grad-norm: expected >= 0 (0 = off), got {self.max_grad_norm}")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"--valid-fraction: expected a fraction in (0, 1), got {self.valid_fraction}")

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
    fused: str = "all"  # the triton backend's fused components (cmath_fast.components)
    precision: str = "auto"  # fp32 | bf16-mixed | fp16-mixed | bf16; auto: backend.device_rules
    resume: bool = False
    override: bool = False  # with resume: continue although settings differ (recorded in the folder)
    progress: bool = True
    max_grad_norm: float = 5.0  # 0 = no clipping
    valid_fraction: float = 0.1  # share of the training dialogues held out for selection
    protocol: str = "cmath-fast"
    protocol_overrides: Tuple[str, ...] = ()  # settings given explicitly over the protocol's
    on_nonfinite: str = "stop"  # a non-finite loss: "stop" the run, or "skip" the step
    group_by_length: bool = False  # batches of dialogues of similar length (less padding)
    cuda_graphs: bool = True  # on CUDA: replay the training step and inference from CUDA graphs
    device_data: str = "auto"  # auto | on | off: the training features held on the device (data.device)
    devices: Optional[str] = None  # seeds in parallel, one process per device (training.parallel)
    world_size: int = 1  # data-parallel ranks of the run (set under torchrun; a resume must keep it)
    deterministic: bool = False  # torch.use_deterministic_algorithms: bit-identical reruns on CUDA
    stop_after_epoch: Optional[int] = None  # for tests: simulate an interruption after this epoch
    overwrite: bool = False  # replace a run already in the output folder (else refused without resume)
    data_fingerprint: Optional[dict] = None  # what the run trains on (data.data_fingerprint); set by train()

    def resolved_precision(self) -> str:
        from ..step import default_precision
        return default_precision(self.device) if self.precision == "auto" else self.precision

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
        from ..components import parse_fused
        parse_fused(self.fused, "--fused")
        if self.device_data not in ("auto", "on", "off"):
            raise ValueError(f"--device-data: expected auto, on or off, got {self.device_data!r}")
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"--on-nonfinite: expected 'stop' or 'skip', got {self.on_nonfinite!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr)):
            raise ValueError(f"--lr: expected a finite number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay: expected a finite number >= 0, got {self.weight_decay}")
        if self.device.startswith("cuda"):
            import torch
            if not torch.cuda.is_available():
                raise ValueError(f"--device {self.device}: CUDA is not available here (torch "
                                 f"{torch.__version__}); use --device cpu")
        if self.precision != "auto":
            from ..step import check_precision
            check_precision(self.precision, self.device)
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"--valid-fraction: expected a fraction in (0, 1), got {self.valid_fraction}")

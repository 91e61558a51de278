"""Random inputs shaped like a preset, for tests, benchmarks, the device-op counter and the
``smoke`` command."""

from __future__ import annotations

from typing import List

import torch

from .config import CMATHConfig


def random_batch(cfg: CMATHConfig, lengths: List[int], generator: torch.Generator, device="cpu"):
    """A random right-padded batch (text, audio, visual, speakers, lengths, labels)."""
    B, L = len(lengths), max(lengths) if lengths else 0
    lens = torch.tensor(lengths, dtype=torch.long)
    feats = [torch.randn(B, L, dim, generator=generator) for dim in
             (cfg.text_dim, cfg.audio_dim, cfg.visual_dim)]
    speakers = torch.randint(0, cfg.num_speakers, (B, L), generator=generator)
    labels = torch.randint(0, cfg.num_classes, (B, L), generator=generator)
    out = [t.to(device) for t in feats] + [speakers.to(device), lens.to(device), labels.to(device)]
    return tuple(out)

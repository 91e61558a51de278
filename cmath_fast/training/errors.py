"""Errors of a run that are not the user's input: a diverged loss, a batch too large for memory."""

from __future__ import annotations

import contextlib

import torch


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run stopped with its earlier checkpoints intact."""


def is_oom(exc: BaseException) -> bool:
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    return isinstance(exc, oom_types) or (isinstance(exc, RuntimeError) and (
        "out of memory" in str(exc) or "can't allocate memory" in str(exc)))


@contextlib.contextmanager
def explain_oom(batch, device: str):
    """An allocation failure inside becomes a MemoryError naming the batch's longest dialogue, its
    length and what to change."""
    try:
        yield
    except Exception as exc:
        if not is_oom(exc):
            raise
        longest = max(range(len(batch.ids)), key=lambda i: int(batch.lengths[i]))
        raise MemoryError(
            f"out of memory on {device} for a batch of {len(batch.ids)} dialogues whose longest, "
            f"{batch.ids[longest]!r}, has {int(batch.lengths[longest])} utterances; lower --batch-size, "
            f"use a smaller model, or split dialogues that long ({str(exc).splitlines()[0][:120]})") from None

"""Helpers shared by the tests: batches, comparison with a message naming the worst element."""

import torch

from cmath_fast.testing import random_batch


def make_batch(cfg, lengths, seed=0, max_len=None):
    gen = torch.Generator().manual_seed(seed)
    text, audio, visual, speakers, lens, labels = random_batch(cfg, list(lengths), gen)
    if max_len is not None and max_len > text.shape[1]:
        extra = max_len - text.shape[1]
        text, audio, visual = (torch.nn.functional.pad(x, (0, 0, 0, extra)) for x in (text, audio, visual))
        speakers = torch.nn.functional.pad(speakers, (0, extra))
        labels = torch.nn.functional.pad(labels, (0, extra))
    return text, audio, visual, speakers, lens, labels


def assert_close(actual, expected, *, atol, rtol=0.0, name="tensor"):
    """torch.testing.assert_close with the worst element's index and both values in the message."""
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values at {torch.nonzero(~torch.isfinite(actual))[:5].tolist()}"
    err = (actual - expected).abs() - (atol + rtol * expected.abs())
    if actual.numel() and err.max() > 0:
        idx = tuple(int(i) for i in torch.nonzero(err == err.max())[0])
        raise AssertionError(
            f"{name}: mismatch at {idx}: got {actual[idx].item():.6g}, expected {expected[idx].item():.6g} "
            f"(|diff| {abs(actual[idx] - expected[idx]).item():.3g} > atol {atol} + rtol {rtol})")

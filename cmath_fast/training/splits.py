"""Train / selection / test dialogue ids of a run."""

from __future__ import annotations

import numpy as np

from ..data.dataset import DataError, MERData


def selection_split(data: MERData, select_on: str, seed: int, valid_fraction: float = 0.1):
    """(train ids, selection ids, test ids). valid = a seeded ``valid_fraction`` of the training
    dialogues (or the data's own valid split when it has one); test = the test split."""
    train = list(data.splits["train"])
    test = list(data.splits.get("test", []))
    if select_on == "test":
        if not test:
            raise DataError("--select-on test needs a test split")
        return train, test, test
    if "valid" in data.splits and data.splits["valid"]:
        return train, list(data.splits["valid"]), test
    rng = np.random.default_rng(seed)
    n_valid = max(1, round(valid_fraction * len(train)))
    if len(train) < 2:
        raise DataError("the training split needs at least 2 dialogues to hold one out for validation")
    picked = set(rng.choice(len(train), size=n_valid, replace=False).tolist())
    return ([v for i, v in enumerate(train) if i not in picked],
            [v for i, v in enumerate(train) if i in picked], test)

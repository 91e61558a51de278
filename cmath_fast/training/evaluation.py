"""Prediction and metrics (scikit-learn's accuracy, weighted F1, per-class F1, confusion)."""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch

from ..data.dataset import Dialogue, iterate_batches
from ..graphs import GraphedPredictor
from ..model import CMATH
from ..step import autocast_context
from .errors import explain_oom

def metrics_from(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    labels = list(range(len(class_names)))
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted",
                                      zero_division=0)) if len(y_true) else 0.0,
        "per_class_f1": {name: float(f) for name, f in zip(class_names, per_class)},
        "n_utterances": int(len(y_true)),
    }


@torch.no_grad()
def predict_dialogues(model: CMATH, dialogues: Sequence[Dialogue], batch_size: int, device: str,
                      precision: str = "fp32", predictor: Optional[GraphedPredictor] = None,
                      cuda_graphs: bool = True):
    """-> list of (dialogue, probabilities (L, C) numpy) in the order given. ``precision``: as the
    model was trained (cmath_fast.step.PRECISIONS); the features are cast to the weights' dtype.
    On CUDA (unless ``cuda_graphs`` is False) the calls replay CUDA graphs, one per shape bucket:
    ``predictor`` keeps them between calls (the trainer evaluates every epoch)."""
    model.eval()
    if predictor is None and cuda_graphs and torch.device(device).type == "cuda":
        predictor = GraphedPredictor(model, batch_size=batch_size, precision=precision)
    out = []
    feat_dtype = model.coarse_head.weight.dtype
    bucket = predictor.bucket if predictor is not None else None
    for batch in iterate_batches(dialogues, batch_size, bucket=bucket, pin=predictor is not None):
        with explain_oom(batch, device):
            if predictor is not None:
                logits = predictor(batch)
            else:
                b = (batch.with_rows() if model.packs() else batch).to(device, feat_dtype)
                with autocast_context(precision, torch.device(device).type):
                    logits = model(*b.inputs(), **b.model_kwargs()).logits
            # kept on the device: the host reads every batch's probabilities once, at the end
            out.append((batch.ids, batch.lengths, torch.softmax(logits.float(), dim=-1)))
    out = [(vid, probs[i, : int(lengths[i])]) for ids, lengths, dev in out
           for probs in (dev.cpu().numpy(),) for i, vid in enumerate(ids)]
    by_id = {d.id: d for d in dialogues}
    return [(by_id[vid], p) for vid, p in out]


def evaluate_model(model: CMATH, dialogues: Sequence[Dialogue], batch_size: int, device: str,
                   class_names: Sequence[str], precision: str = "fp32",
                   predictor: Optional[GraphedPredictor] = None, cuda_graphs: bool = True) -> dict:
    preds = predict_dialogues(model, dialogues, batch_size, device, precision, predictor, cuda_graphs)
    y_true = np.concatenate([d.labels for d, _ in preds]) if preds else np.zeros(0, dtype=np.int64)
    y_pred = np.concatenate([p.argmax(-1) for _, p in preds]) if preds else np.zeros(0, dtype=np.int64)
    labelled = y_true >= 0  # unlabelled utterances (-1) are predicted, not scored
    y_true, y_pred = y_true[labelled], y_pred[labelled]
    result = metrics_from(y_true, y_pred, class_names)
    result["_y_true"], result["_y_pred"] = y_true, y_pred
    return result


def public(m: dict) -> dict:
    return {k: v for k, v in m.items() if not k.startswith("_")}


def confusion_matrix_of(m: dict, n_classes: int) -> List[List[int]]:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(m["_y_true"], m["_y_pred"], labels=list(range(n_classes))).tolist()

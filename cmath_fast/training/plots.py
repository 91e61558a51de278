"""Training curves and the confusion matrix as PNG files (when matplotlib is installed)."""

from __future__ import annotations

import os
from typing import List

import numpy as np

def write_plots(out_dir: str, history: List[dict], result: dict) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in history], label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("total loss")
    ax1.legend()
    sel = "test (selection)" if result["select_on"] == "test" else "valid"
    ax2.plot(epochs, [r["select_weighted_f1"] for r in history], label=f"{sel} weighted F1")
    ax2.plot(epochs, [r["test_accuracy"] for r in history], label="test accuracy")
    ax2.plot(epochs, [r["test_weighted_f1"] for r in history], label="test weighted F1")
    ax2.axvline(result["epoch"], color="grey", linestyle=":", label="selected epoch")
    ax2.set_xlabel("epoch")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "curves.png"), dpi=100)
    plt.close(fig)

    cm = np.array(result["confusion_matrix"])
    names = result["class_names"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(names), 1.0 + 0.7 * len(names)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{result['split']} confusion (epoch {result['epoch']})")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "confusion.png"), dpi=100)
    plt.close(fig)

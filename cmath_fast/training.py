"""Training, evaluation and prediction loops, checkpoints and resume.

A run writes into its output folder: ``config.json``, ``metrics.json``, ``history.csv``,
``best.safetensors`` (weights + JSON metadata: config, epoch, metrics), ``last.safetensors``
(everything ``--resume`` needs: weights, optimiser, RNG states, history) and, when matplotlib is
present, ``curves.png`` and ``confusion.png``. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .config import MODALITIES, MODALITY_NAMES, CMATHConfig
from .data.dataset import DataError, Dialogue, MERData, feature_stats, iterate_batches, num_batches
from .data.loaders import KNOWN_VARIANTS
from .io import atomic_write_text, load_checkpoint, save_checkpoint
from .model import CMATH
from .step import train_step

SELECTION_TEXT = {
    "valid": "model selected on a seeded 10% validation split of the training dialogues",
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
    max_grad_norm: float = 5.0
    stop_after_epoch: Optional[int] = None  # for tests: simulate an interruption after this epoch

    def validate(self) -> None:
        if self.select_on not in SELECTION_TEXT:
            raise ValueError(f"--select-on: expected 'valid' or 'test', got {self.select_on!r}")
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"--{key.replace('_', '-')}: expected a positive integer, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ValueError(f"--lr: expected > 0, got {self.lr}")


# ---------------------------------------------------------------------- config from data
def preset_for(data: MERData, dataset: Optional[str] = None) -> str:
    if dataset:
        return dataset
    name = data.dataset
    if name in ("iemocap", "meld"):
        return name
    if name == "synthetic-small":
        return "tiny"
    if name.startswith("synthetic-"):
        return name.split("-", 1)[1]
    return "tiny"


def config_for_data(data: MERData, *, dataset: Optional[str] = None, config_file: Optional[str] = None,
                    overrides: Optional[dict] = None) -> (CMATHConfig, List[str]):
    """The model config for ``data``: a preset, the data's dims, speakers and classes, then the
    JSON file's fields and ``overrides``. Returns (config, notes on what differs)."""
    notes = []
    fields = {}
    if config_file:
        try:
            with open(config_file, encoding="utf-8") as fh:
                fields = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"--config {config_file}: unreadable JSON ({exc})") from None
        if not isinstance(fields, dict):
            raise ValueError(f"--config {config_file}: expected a JSON object of config fields")
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


# ---------------------------------------------------------------------- splits and metrics
def selection_split(data: MERData, select_on: str, seed: int):
    """(train ids, selection ids, test ids). valid = a seeded 10% of the training dialogues."""
    train = list(data.splits["train"])
    test = list(data.splits.get("test", []))
    if select_on == "test":
        if not test:
            raise DataError("--select-on test needs a test split")
        return train, test, test
    if "valid" in data.splits and data.splits["valid"]:
        return train, list(data.splits["valid"]), test
    rng = np.random.default_rng(seed)
    n_valid = max(1, round(0.1 * len(train)))
    if len(train) < 2:
        raise DataError("the training split needs at least 2 dialogues to hold one out for validation")
    picked = set(rng.choice(len(train), size=n_valid, replace=False).tolist())
    return ([v for i, v in enumerate(train) if i not in picked],
            [v for i, v in enumerate(train) if i in picked], test)


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
def predict_dialogues(model: CMATH, dialogues: Sequence[Dialogue], batch_size: int, device: str):
    """-> list of (dialogue, probabilities (L, C) numpy) in the order given."""
    model.eval()
    out = []
    for batch in iterate_batches(dialogues, batch_size):
        b = batch.to(device)
        probs = torch.softmax(model(*b.inputs()).logits.float(), dim=-1).cpu().numpy()
        for i, vid in enumerate(batch.ids):
            n = int(batch.lengths[i])
            out.append((vid, probs[i, :n]))
    by_id = {d.id: d for d in dialogues}
    return [(by_id[vid], p) for vid, p in out]


def evaluate_model(model: CMATH, dialogues: Sequence[Dialogue], batch_size: int, device: str,
                   class_names: Sequence[str]) -> dict:
    preds = predict_dialogues(model, dialogues, batch_size, device)
    y_true = np.concatenate([d.labels for d, _ in preds]) if preds else np.zeros(0, dtype=np.int64)
    y_pred = np.concatenate([p.argmax(-1) for _, p in preds]) if preds else np.zeros(0, dtype=np.int64)
    result = metrics_from(y_true, y_pred, class_names)
    result["_y_true"], result["_y_pred"] = y_true, y_pred
    return result


def public(m: dict) -> dict:
    return {k: v for k, v in m.items() if not k.startswith("_")}


# ---------------------------------------------------------------------- checkpoints
def _flatten_optimizer(opt: torch.optim.Optimizer):
    sd = opt.state_dict()
    tensors, plain = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim/{idx}/{key}"] = value
            else:
                plain[f"{idx}/{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def _unflatten_optimizer(tensors: Dict[str, torch.Tensor], meta: dict) -> dict:
    state: Dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["plain"].items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_model(path: str, model: CMATH, meta: dict, extra: Optional[Dict[str, torch.Tensor]] = None):
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update(extra or {})
    meta = dict(meta, config=model.cfg.to_dict(), format="cmath-fast-checkpoint-1")
    save_checkpoint(path, tensors, meta)


def resolve_checkpoint(path: str) -> str:
    if os.path.isdir(path):
        for name in ("best.safetensors", "seed0/best.safetensors"):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise FileNotFoundError(f"{path}: no best.safetensors in this folder")
    return path


def load_model(path: str, device: str = "cpu", backend: str = "auto"):
    """-> (model on ``device`` in eval mode, checkpoint metadata)."""
    tensors, meta = load_checkpoint(resolve_checkpoint(path))
    if "config" not in meta:
        raise ValueError(f"{path}: the checkpoint has no config")
    cfg = CMATHConfig.from_dict(meta["config"])
    model = CMATH(cfg, backend=backend)
    state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    model.load_state_dict(state)
    return model.to(device).eval(), meta


# ---------------------------------------------------------------------- training
def _write_history(path: str, history: List[dict]) -> None:
    if not history:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


def _summary_line(row: dict, select_on: str) -> str:
    sel = "test*" if select_on == "test" else "valid"
    return (f"epoch {row['epoch']:3d}  loss {row['train_loss']:.4f}  "
            f"{sel} acc {row['select_accuracy']:.4f} wF1 {row['select_weighted_f1']:.4f}  "
            f"test acc {row['test_accuracy']:.4f} wF1 {row['test_weighted_f1']:.4f}  "
            f"{row['seconds']:.1f}s")


def train_one(cfg: CMATHConfig, data: MERData, opts: TrainOptions, out_dir: str,
              log=print) -> dict:
    """Train one seed into ``out_dir``; returns the metrics of the selected epoch."""
    opts.validate()
    os.makedirs(out_dir, exist_ok=True)
    train_ids, select_ids, test_ids = selection_split(data, opts.select_on, opts.seed)
    train_d = [data.dialogues[i] for i in train_ids]
    select_d = [data.dialogues[i] for i in select_ids]
    test_d = [data.dialogues[i] for i in test_ids]
    names = tuple(data.class_names)

    torch.manual_seed(opts.seed)
    model = CMATH(cfg, backend=opts.backend)
    model.set_feature_stats(feature_stats(train_d))
    model.to(opts.device)
    opt = torch.optim.Adam(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    shuffle_gen = torch.Generator().manual_seed(opts.seed)
    history: List[dict] = []
    best = {"score": -math.inf, "epoch": -1, "select": None, "test": None}
    start_epoch = 0
    last_path = os.path.join(out_dir, "last.safetensors")

    if opts.resume and os.path.isfile(last_path):
        tensors, meta = load_checkpoint(last_path)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
        opt.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
        torch.set_rng_state(tensors["rng/torch"])
        shuffle_gen.set_state(tensors["rng/shuffle"])
        if opts.device.startswith("cuda") and "rng/cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng/cuda"])
        history, best, start_epoch = meta["history"], meta["best"], meta["epoch"] + 1
        log(f"resumed from {last_path} after epoch {meta['epoch']}")
    atomic_write_text(os.path.join(out_dir, "config.json"), cfg.to_json())

    for epoch in range(start_epoch, opts.epochs):
        t0 = time.perf_counter()
        model.train()
        sums: Dict[str, float] = {}
        n_steps = num_batches(len(train_d), opts.batch_size)
        bar = _progress(n_steps, f"epoch {epoch}", opts.progress)
        for batch in iterate_batches(train_d, opts.batch_size, shuffle=True, generator=shuffle_gen):
            b = batch.to(opts.device)
            total, terms = train_step(model, opt, b.inputs(), b.labels, epoch, opts.max_grad_norm)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.update(1)
            bar.set_postfix(loss=f"{float(total.detach()):.3f}")
        bar.close()
        sel = evaluate_model(model, select_d, opts.batch_size, opts.device, names)
        tst = evaluate_model(model, test_d, opts.batch_size, opts.device, names) if test_d else sel
        row = {"epoch": epoch, "train_loss": sums.get("total", 0.0) / max(n_steps, 1)}
        row.update({f"train_{k}": v / max(n_steps, 1) for k, v in sums.items() if k != "total"})
        row.update({"select_accuracy": sel["accuracy"], "select_weighted_f1": sel["weighted_f1"],
                    "test_accuracy": tst["accuracy"], "test_weighted_f1": tst["weighted_f1"],
                    "seconds": time.perf_counter() - t0})
        history.append(row)
        log(_summary_line(row, opts.select_on))
        if sel["weighted_f1"] > best["score"]:
            best = {"score": sel["weighted_f1"], "epoch": epoch, "select": public(sel),
                    "test": public(tst), "confusion": _confusion(tst, len(names))}
            save_model(os.path.join(out_dir, "best.safetensors"), model,
                       {"epoch": epoch, "select_on": opts.select_on, "metrics": public(tst),
                        "selection": SELECTION_TEXT[opts.select_on]})
        extra = {"rng/torch": torch.get_rng_state(), "rng/shuffle": shuffle_gen.get_state()}
        if opts.device.startswith("cuda"):
            extra["rng/cuda"] = torch.cuda.get_rng_state()
        opt_tensors, opt_meta = _flatten_optimizer(opt)
        extra.update(opt_tensors)
        save_model(last_path, model, {"epoch": epoch, "history": history, "best": best,
                                      "optimizer": opt_meta, "options": asdict(opts)}, extra)
        _write_history(os.path.join(out_dir, "history.csv"), history)
        if opts.stop_after_epoch is not None and epoch >= opts.stop_after_epoch:
            return {"interrupted_after_epoch": epoch}

    result = dict(best["test"])
    result.update({
        "select_on": opts.select_on, "selection": SELECTION_TEXT[opts.select_on],
        "epoch": best["epoch"], "seed": opts.seed, "epochs": opts.epochs,
        "select_accuracy": best["select"]["accuracy"],
        "select_weighted_f1": best["select"]["weighted_f1"],
        "confusion_matrix": best["confusion"], "class_names": list(names),
        "split": "test" if test_d else "valid",
    })
    atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(result, indent=2))
    _plots(out_dir, history, result)
    return result


def train(cfg: CMATHConfig, data: MERData, opts: TrainOptions, out_dir: str, seeds: int = 1,
          log=print) -> dict:
    """Train ``seeds`` runs (seeds opts.seed, opts.seed+1, ...); write the combined metrics.json."""
    if seeds < 1:
        raise ValueError(f"--seeds: expected a positive integer, got {seeds}")
    if seeds == 1:
        return train_one(cfg, data, opts, out_dir, log)
    runs = []
    for k in range(seeds):
        seed_opts = TrainOptions(**{**asdict(opts), "seed": opts.seed + k})
        log(f"--- seed {seed_opts.seed} ---")
        runs.append(train_one(cfg, data, seed_opts, os.path.join(out_dir, f"seed{k}"), log))
    if any("interrupted_after_epoch" in r for r in runs):
        return runs[-1]
    result = {"select_on": opts.select_on, "selection": SELECTION_TEXT[opts.select_on],
              "class_names": list(data.class_names), "seeds": [r["seed"] for r in runs],
              "per_seed": [{k: r[k] for k in ("seed", "epoch", "accuracy", "weighted_f1")} for r in runs]}
    for key in ("accuracy", "weighted_f1"):
        vals = np.array([r[key] for r in runs])
        result[key] = float(vals.mean())
        result[f"{key}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    result["per_class_f1"] = {n: float(np.mean([r["per_class_f1"][n] for r in runs]))
                              for n in data.class_names}
    atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(result, indent=2))
    atomic_write_text(os.path.join(out_dir, "config.json"), cfg.to_json())
    return result


def _confusion(m: dict, n_classes: int) -> List[List[int]]:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(m["_y_true"], m["_y_pred"], labels=list(range(n_classes))).tolist()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=not enabled)


def _plots(out_dir: str, history: List[dict], result: dict) -> None:
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

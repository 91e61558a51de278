"""The training loop: epochs, selection, resume, the run folder.

A run writes into its output folder: ``config.json``, ``metrics.json``, ``history.csv``,
``best.safetensors`` (weights + JSON metadata: config, epoch, metrics), ``last.safetensors``
(everything ``--resume`` needs: weights, optimiser, RNG states, history) and, when matplotlib is
present, ``curves.png`` and ``confusion.png``. Every file is written atomically."""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import math
import os
import sys
import time
from dataclasses import asdict, replace
from typing import Dict, List

import numpy as np
import torch

from ..config import CONFIG_SCHEMA_VERSION, CMATHConfig
from ..data.dataset import MERData, batch_indices, data_fingerprint, feature_stats, num_batches
from ..data.device import DeviceDialogues, StagedDialogues, keep_on_device
from ..distributed import from_env, loss_scales, share, unwrap
from ..graphs import GraphedPredictor, GraphedTrainer, capture_blockers
from ..io import atomic_write_text, output_folder
from ..model import CMATH
from ..step import make_grad_scaler, train_step, weight_dtype
from .checkpoints import flatten_optimizer, load_weights, read_checkpoint, save_model, unflatten_optimizer
from .errors import NonFiniteLossError, explain_oom
from .evaluation import confusion_matrix_of, evaluate_model, metrics_from, predict_dialogues, public
from .options import SELECTION_TEXT, TrainOptions
from .plots import write_plots
from .protocol import protocol_label
from .rundir import (RunLock, ResumeMismatchError, clean_stale_temps, existing_run, record_override,
                     remove_run_files, resume_differences)
from .splits import selection_split


def _write_history(path: str, history: List[dict]) -> None:
    if not history:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


def _summary_line(row: dict, opts: TrainOptions) -> str:
    sel = "test*" if opts.select_on == "test" else "valid"
    return (f"epoch {row['epoch']:3d}  loss {row['train_loss']:.4f}  "
            f"{sel} acc {row['select_accuracy']:.4f} wF1 {row['select_weighted_f1']:.4f}  "
            f"test acc {row['test_accuracy']:.4f} wF1 {row['test_weighted_f1']:.4f}  "
            f"{row['seconds']:.1f}s  [{protocol_label(opts)}]")


# On a GPU the loss terms are summed on the device and read by the host every this many steps (and
# at the end of an epoch): no synchronisation per step. On the CPU reading costs nothing: every step.
DEVICE_SYNC_EVERY = 25


class EpochTerms:
    """An epoch's loss terms, summed on the device over the finite steps, with the first step whose
    terms were not finite (its index and terms kept on the device until the host reads them).

    Everything ``add`` does is on the device, in place, with the step counted there too: a graphed
    training step (``graphs.GraphedTrainer(terms=...)``) does it inside its graph, so the
    bookkeeping launches nothing per step outside the replay. ``reset()`` starts the next epoch
    in the same buffers (the graphs keep reading them)."""

    def __init__(self, every: int):
        self.every = every
        self.order: List[str] = []
        self.names: List[str] = []
        self.beta = None
        self.sums = self.count = self.bad_step = self.bad = self.steps = None

    def add(self, terms: Dict[str, torch.Tensor]) -> None:
        if self.sums is None:
            self.order = list(terms)
            self.names = [k for k in terms if k != "beta"]  # beta: the epoch's weight, not summed
            device = terms["total"].device
            self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=device)
            self.bad = torch.zeros_like(self.sums)
            self.count = torch.zeros((), dtype=torch.float64, device=device)
            self.bad_step = torch.full((), -1, dtype=torch.long, device=device)
            self.steps = torch.zeros((), dtype=torch.long, device=device)
            self.beta = torch.zeros((), dtype=torch.float32, device=device)
        self.beta.copy_(terms["beta"])  # read on the host with the means (no sync per step)
        vec = torch.stack([terms[k].double() for k in self.names])
        finite = torch.isfinite(vec).all()
        self.sums.add_(torch.where(finite, vec, torch.zeros_like(vec)))
        self.count.add_(finite.double())
        first = (self.bad_step < 0) & ~finite
        self.bad.copy_(torch.where(first, vec, self.bad))
        self.bad_step.copy_(torch.where(first, self.steps, self.bad_step))
        self.steps.add_(1)

    def snapshot(self):
        """The accumulators' values (None before the first step), for ``restore``."""
        return None if self.sums is None else [t.clone() for t in (self.sums, self.bad, self.count, self.steps,
                                                                   self.bad_step)]

    def restore(self, snap) -> None:
        """Back to a ``snapshot`` in place (the buffers' addresses kept)."""
        if snap is None:
            self.reset()
            return
        for t, saved in zip((self.sums, self.bad, self.count, self.steps, self.bad_step), snap):
            t.copy_(saved)

    def reset(self) -> None:
        """Zero the sums and counts for a new epoch (a handful of fills, once per epoch)."""
        if self.sums is not None:
            for t in (self.sums, self.bad, self.count, self.steps):
                t.zero_()
            self.bad_step.fill_(-1)

    def due(self, step: int, last: bool) -> bool:
        return last or (step + 1) % self.every == 0

    def first_nonfinite(self):
        """(step, {term: value}) of the first non-finite step, or (None, {}): one host read."""
        if self.bad_step is None or int(self.bad_step) < 0:
            return None, {}
        return int(self.bad_step), dict(zip(self.names, self.bad.tolist()))

    def means(self) -> Dict[str, float]:
        """Mean of each term over the finite steps, in the order the loss returned them."""
        if self.sums is None:
            return {}
        means = dict(zip(self.names, (self.sums / self.count.clamp_min(1.0)).tolist()))
        means["beta"] = float(self.beta) if self.beta is not None else 0.0
        return {k: means[k] for k in self.order}


@contextlib.contextmanager
def deterministic(enabled: bool):
    """``--deterministic``: deterministic algorithms only (embedding and gather backward use atomics
    otherwise), with the cuBLAS workspace setting they require on CUDA; the previous setting is
    restored afterwards."""
    if not enabled:
        yield
        return
    prev = torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)


def make_optimizer(model: CMATH, opts: TrainOptions) -> torch.optim.Optimizer:
    """Adam with L2 weight decay (the lineage's optimiser); on CUDA its fused, capturable form (one
    kernel per step, its step counter on the device), with the same math."""
    kwargs = dict(lr=opts.lr, weight_decay=opts.weight_decay)
    if torch.device(opts.device).type == "cuda":
        try:
            return torch.optim.Adam(model.parameters(), fused=True, capturable=True, **kwargs)
        except (TypeError, RuntimeError, ValueError):  # a torch without the fused form
            pass
    return torch.optim.Adam(model.parameters(), **kwargs)


def _rank_batches(dialogues, one_batch, ctx, class_weights, batch_size, *, shuffle, generator, pin, bucket,
                  group_by_length):
    """Data-parallel batches: the global batches every rank draws alike (the same seeded order),
    this rank's share of each (``distributed.share``) with the factors that rescale its loss to the
    global batch's denominators: (batch, (s_w, s_n)) each."""
    for chunk in batch_indices([len(d) for d in dialogues], batch_size, shuffle=shuffle, generator=generator,
                               group_by_length=group_by_length):
        mine, empty = share(chunk, ctx.rank, ctx.world)
        batch = one_batch(mine)
        yield (batch.pin_memory() if pin else batch), loss_scales(dialogues, chunk, mine, empty, ctx.world,
                                                                  class_weights)


# Which denominator each loss term has: the class weights' sum (the cross-entropies) or the count of
# valid utterances (the rest).
_WEIGHTED_TERMS = ("ce", "fine_ce")


def _global_share(terms, total, scale, world):
    """This rank's share of the global batch's loss terms (their sum over the ranks is the global
    value): each term times its factor / world; the total, scaled already, / world."""
    s_w, s_n = scale
    out = {k: (v * ((s_w if k in _WEIGHTED_TERMS else s_n) / world) if k not in ("beta", "total") else v)
           for k, v in terms.items()}
    out["total"] = total / world
    return out


def evaluate_shared(ctx, model, dialogues, batch_size, device, class_names, precision="fp32", predictor=None,
                    cuda_graphs=True) -> dict:
    """``evaluate_model`` over the ranks: each predicts its share of the dialogues, the confusion
    matrix is summed over the ranks, and the metrics are computed from it (exactly a single
    process's)."""
    k = len(class_names)
    mine = list(dialogues)[ctx.rank::ctx.world]
    conf = torch.zeros((k, k), dtype=torch.float64)
    for d, probs in predict_dialogues(model, mine, batch_size, device, precision, predictor, cuda_graphs):
        y = np.asarray(d.labels)
        keep = y >= 0
        np.add.at(conf.numpy(), (y[keep], probs.argmax(-1)[keep]), 1)
    conf = ctx.all_reduce_(conf.to(ctx.device)).cpu()  # gloo sums CPU tensors, NCCL device ones
    counts = conf.round().long().numpy()
    y_true = np.repeat(np.repeat(np.arange(k), k), counts.reshape(-1))
    y_pred = np.repeat(np.tile(np.arange(k), k), counts.reshape(-1))
    result = metrics_from(y_true, y_pred, class_names)
    result["_y_true"], result["_y_pred"] = y_true, y_pred
    return result


def train_one(cfg: CMATHConfig, data: MERData, opts: TrainOptions, out_dir: str,
              log=print) -> dict:
    """Train one seed into ``out_dir`` (holding the folder's run lock); returns the metrics of the
    selected epoch."""
    opts.validate()
    with RunLock(out_dir), deterministic(opts.deterministic):
        return _train_one(cfg, data, opts, out_dir, log)


def _train_one(cfg, data, opts, out_dir, log, ctx=None):
    """One run; ``ctx`` (``distributed.DistContext``): this process is one rank of a data-parallel
    run — it trains on its share of every batch, and only rank 0 writes."""
    data.check_trainable()
    main = ctx is None or ctx.is_main
    stale = clean_stale_temps(out_dir) if main else []
    if stale:
        log(f"removed {len(stale)} temporary file(s) left by an interrupted write in {out_dir}")
    train_ids, select_ids, test_ids = selection_split(data, opts.select_on, opts.seed, opts.valid_fraction)
    train_d = [data.dialogues[i] for i in train_ids]
    select_d = [data.dialogues[i] for i in select_ids]
    test_d = [data.dialogues[i] for i in test_ids]
    names = tuple(data.class_names)
    last_path = os.path.join(out_dir, "last.safetensors")

    resumed = None
    if opts.resume:
        if os.path.isfile(last_path):
            resumed = read_checkpoint(last_path)
            _, meta, _ = resumed
            diffs = resume_differences(meta["config"], meta.get("options", {}), cfg, opts, meta["epoch"] + 1)
            if diffs and not opts.override:
                raise ResumeMismatchError(
                    f"--resume: the run in {out_dir} was made with other settings: " + "; ".join(diffs)
                    + " (give the same settings, or --override to continue with the new ones)")
            if diffs and main:
                record_override(out_dir, diffs)
                log("--resume --override: continuing with " + "; ".join(diffs))
            before = {k: meta.get("options", {}).get(k, "auto" if k == "backend" else "all")
                      for k in ("backend", "fused")}
            changed = [f"--{k} {before[k]} -> {getattr(opts, k)}" for k in before if before[k] != getattr(opts, k)]
            if changed:
                log("--resume: " + ", ".join(changed) + ": the same computation at another speed; the "
                    "training random stream differs from here on")
        else:
            log(f"--resume: no usable checkpoint in {out_dir} (no last.safetensors); starting a new run")

    torch.manual_seed(opts.seed)
    precision = opts.resolved_precision()
    model = CMATH(cfg, backend=opts.backend, fused=opts.fused)
    model.set_feature_stats(feature_stats(train_d))
    model.to(device=opts.device, dtype=weight_dtype(precision))
    scaler = make_grad_scaler(precision, torch.device(opts.device).type)
    opt = make_optimizer(model, opts)
    shuffle_gen = torch.Generator().manual_seed(opts.seed)
    history: List[dict] = []
    best = {"score": -math.inf, "epoch": -1, "select": None, "test": None}
    start_epoch = 0

    if resumed is not None:
        tensors, meta, _ = resumed
        load_weights(model, tensors, last_path)
        opt.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
        if opts.override:  # the new lr and weight decay apply from here on
            for group in opt.param_groups:
                group.update(lr=opts.lr, weight_decay=opts.weight_decay)
        torch.set_rng_state(tensors["rng/torch"])
        shuffle_gen.set_state(tensors["rng/shuffle"])
        if opts.device.startswith("cuda") and "rng/cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng/cuda"])
        history, best, start_epoch = meta["history"], meta["best"], meta["epoch"] + 1
        log(f"resumed from {last_path} after epoch {meta['epoch']}")
    if main:
        atomic_write_text(os.path.join(out_dir, "config.json"), run_config(cfg, opts).to_json())
    if ctx is not None:
        # the same weights everywhere (DDP broadcasts rank 0's), dropout drawn per rank
        from torch.nn.parallel import DistributedDataParallel
        torch.manual_seed(opts.seed * 7919 + 104729 * start_epoch + ctx.rank)
        core = model
        model = DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device != "cpu" else None)
        class_w = list(core.cfg.class_weights) if core.cfg.class_weights is not None else None

    progress = opts.progress and sys.stderr.isatty()  # a bar in a file or pipe is one endless line
    skip = opts.on_nonfinite == "skip"
    every = 1 if torch.device(opts.device).type == "cpu" else DEVICE_SYNC_EVERY
    pin = torch.device(opts.device).type == "cuda"  # non-blocking host-to-device copies
    graphed = predictor = store = None
    on_device, why = keep_on_device(train_d, opts.device, weight_dtype(precision), opts.device_data)
    if on_device:  # a step then copies its utterance indices, not its features
        store = DeviceDialogues(train_d, opts.device, weight_dtype(precision))
        draw_from = store.batches
        one_batch = store.index_batch
    else:  # each step's valid rows staged in a reused pinned buffer and copied
        staged = StagedDialogues(train_d, weight_dtype(precision), pin=pin)
        draw_from = staged.batches
        one_batch = staged.staged_batch
    if ctx is not None:  # every rank draws the same global batches and takes its share of each
        draw_from = functools.partial(_rank_batches, train_d, one_batch, ctx, class_w)
    if pin:
        log(f"training features {'on the device' if store is not None else 'staged and copied per step'} ({why})")
    terms_sum = EpochTerms(every)  # one for the run: the graphs accumulate into its buffers
    if opts.cuda_graphs and pin and ctx is not None:
        log("CUDA graphs off for the training step under DistributedDataParallel: its gradient all-reduce "
            "is not captured here; evaluation keeps them")
        predictor = GraphedPredictor(core, batch_size=opts.batch_size, precision=precision)
    elif opts.cuda_graphs and pin:
        # one predictor for the run: evaluation captures its graphs once, not every epoch
        predictor = GraphedPredictor(model, batch_size=opts.batch_size, precision=precision)
        blockers = capture_blockers(opts.device, precision, skip, opt)
        if blockers:
            log("CUDA graphs off for the training step (evaluation keeps them): " + "; ".join(blockers))
        else:
            graphed = GraphedTrainer(model, opt, batch_size=opts.batch_size, precision=precision,
                                     max_grad_norm=opts.max_grad_norm, store=store, terms=terms_sum)
    for epoch in range(start_epoch, opts.epochs):
        t0 = time.perf_counter()
        model.train()
        n_steps = num_batches(len(train_d), opts.batch_size)
        n_skipped = 0
        terms_sum.reset()
        bar = _progress(n_steps, f"epoch {epoch}", progress)
        for step, item in enumerate(draw_from(opts.batch_size, shuffle=True, generator=shuffle_gen, pin=pin,
                                              bucket=graphed.bucket if graphed else None,
                                              group_by_length=opts.group_by_length)):
            batch, scale = item if ctx is not None else (item, None)
            with explain_oom(batch, opts.device):
                if graphed is not None:
                    total, terms = graphed.step(batch, epoch)
                else:
                    # the packed layout built from the host's lengths: no read-back from the device
                    b = (batch.with_rows() if unwrap(model).packs() else batch).to(opts.device, weight_dtype(precision))
                    b = b.gather(store)  # from the device store, or the batch's own staged rows
                    total, terms = train_step(model, opt, b.inputs(), b.labels, epoch, opts.max_grad_norm,
                                              skip_nonfinite=skip, precision=precision, scaler=scaler,
                                              rows=b.rows, loss_scale=scale)
                    if ctx is not None:  # this rank's share of the batch's global terms (summed over ranks)
                        terms = _global_share(terms, total, scale, ctx.world)
            # skip mode read the loss on the host in train_step already
            if skip and not bool(torch.isfinite(total)):
                n_skipped += 1
                shown = ", ".join(f"{k} {float(v):.4g}" for k, v in terms.items())
                log(f"epoch {epoch} step {step}: non-finite loss ({shown}); step skipped")
                bar.update(1)
                continue
            if graphed is None:  # a graphed step accumulated its terms inside its graph
                terms_sum.add(terms)
            bar.update(1)
            if terms_sum.due(step, step == n_steps - 1):
                bad_step, bad_terms = terms_sum.first_nonfinite()
                if bad_step is not None:
                    shown = ", ".join(f"{k} {v:.4g}" for k, v in bad_terms.items())
                    kept = (f"the last good checkpoint is {last_path} (after epoch {epoch - 1})"
                            if epoch > 0 and os.path.isfile(last_path) else "no epoch had completed")
                    raise NonFiniteLossError(
                        f"non-finite loss at epoch {epoch}, step {bad_step} ({shown}); the run stopped and "
                        f"wrote nothing for this epoch: {kept}. Lower --lr, or --on-nonfinite skip")
                bar.set_postfix(loss=f"{terms_sum.means()['total']:.3f}")
        bar.close()
        evaluate = evaluate_model if ctx is None else functools.partial(evaluate_shared, ctx)
        sel = evaluate(unwrap(model), select_d, opts.batch_size, opts.device, names, precision, predictor,
                       opts.cuda_graphs)
        tst = evaluate(unwrap(model), test_d, opts.batch_size, opts.device, names, precision, predictor,
                       opts.cuda_graphs) if test_d else sel
        if ctx is not None and terms_sum.sums is not None:
            ctx.all_reduce_(terms_sum.sums)  # the ranks' shares of each step's global terms
        means = terms_sum.means()
        row = {"epoch": epoch, "train_loss": means.get("total", 0.0)}
        row.update({f"train_{k}": v for k, v in means.items() if k != "total"})
        row.update({"select_accuracy": sel["accuracy"], "select_weighted_f1": sel["weighted_f1"],
                    "test_accuracy": tst["accuracy"], "test_weighted_f1": tst["weighted_f1"],
                    "skipped_steps": n_skipped, "seconds": time.perf_counter() - t0})
        history.append(row)
        log(_summary_line(row, opts))
        if sel["weighted_f1"] > best["score"]:
            best = {"score": sel["weighted_f1"], "epoch": epoch, "select": public(sel),
                    "test": public(tst), "confusion": confusion_matrix_of(tst, len(names))}
            if main:
                save_model(os.path.join(out_dir, "best.safetensors"), model,
                           {"epoch": epoch, "select_on": opts.select_on, "metrics": public(tst),
                            "selection": SELECTION_TEXT[opts.select_on], "protocol_label": protocol_label(opts),
                            "extractors": data.extractors})
        extra = {"rng/torch": torch.get_rng_state(), "rng/shuffle": shuffle_gen.get_state()}
        if opts.device.startswith("cuda"):
            extra["rng/cuda"] = torch.cuda.get_rng_state()
        opt_tensors, opt_meta = flatten_optimizer(opt)
        extra.update(opt_tensors)
        if main:
            save_model(last_path, model, {"epoch": epoch, "history": history, "best": best,
                                          "optimizer": opt_meta, "options": asdict(opts),
                                          "extractors": data.extractors}, extra)
            _write_history(os.path.join(out_dir, "history.csv"), history)
        if ctx is not None:
            ctx.barrier()  # rank 0's files for this epoch are written before any rank goes on
        if opts.stop_after_epoch is not None and epoch >= opts.stop_after_epoch:
            return {"interrupted_after_epoch": epoch}

    if best["test"] is None:
        raise ValueError(f"--epochs {opts.epochs}: no epoch left to train in {out_dir}")
    result = dict(best["test"])
    result.update({
        "schema_version": CONFIG_SCHEMA_VERSION,
        "select_on": opts.select_on, "selection": SELECTION_TEXT[opts.select_on],
        "protocol": opts.protocol, "protocol_label": protocol_label(opts),
        "epoch": best["epoch"], "seed": opts.seed, "epochs": opts.epochs,
        "backend": unwrap(model).backend, "fused": unwrap(model).fused, "data": opts.data_fingerprint,
        "select_accuracy": best["select"]["accuracy"],
        "select_weighted_f1": best["select"]["weighted_f1"],
        "confusion_matrix": best["confusion"], "class_names": list(names),
        "split": "test" if test_d else "valid",
    })
    if ctx is not None:
        result["world_size"] = ctx.world
    if main:
        atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(result, indent=2))
        write_plots(out_dir, history, result)
    return result


def run_config(cfg: CMATHConfig, opts: TrainOptions) -> CMATHConfig:
    """The config as the run used it (``config.json``): the epochs, batch size, learning rate and
    weight decay it ran with, not the preset's."""
    return cfg.replace(epochs=opts.epochs, batch_size=opts.batch_size, lr=opts.lr, weight_decay=opts.weight_decay)


class RunExistsError(ValueError):
    """The output folder already holds a run, and neither --resume nor --overwrite was given."""


def check_output(out_dir: str, resume: bool, overwrite: bool) -> None:
    """The output folder can take this run: a folder (or a path to make one), and not holding a run
    unless --resume continues it or --overwrite replaces it."""
    output_folder(out_dir)
    held = existing_run(out_dir)
    if held and not (resume or overwrite):
        raise RunExistsError(f"--out {out_dir} holds {held}: continue it with --resume, replace it with "
                             f"--overwrite, or give another --out")


def train(cfg: CMATHConfig, data: MERData, opts: TrainOptions, out_dir: str, seeds: int = 1,
          log=print) -> dict:
    """Train ``seeds`` runs (seeds opts.seed, opts.seed+1, ...); write the combined metrics.json.
    The run folder is locked for the whole run; a run that fails before writing anything leaves no
    folder behind. ``opts.data_fingerprint`` is computed here when not given (the CLI gives it
    with the file's path)."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds: expected a positive integer, got {seeds}")
    opts.validate()
    ctx = from_env(opts.device)
    if ctx is not None:  # one rank of a data-parallel run (torchrun)
        if seeds > 1 or opts.devices:
            raise ValueError("under torchrun a run is one data-parallel run: give --seeds 1 and no --devices")
        opts = replace(opts, device=ctx.device, world_size=ctx.world)
        if opts.data_fingerprint is None:
            opts = replace(opts, data_fingerprint=data_fingerprint(data))
        if not ctx.is_main:
            ctx.barrier()  # rank 0 checks the folder and takes its lock first
            with deterministic(opts.deterministic):
                result = _train_one(cfg, data, opts, out_dir, lambda *a, **k: None, ctx)
            ctx.close()
            return result
        check_output(out_dir, opts.resume, opts.overwrite)
        made = not os.path.exists(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        try:
            with RunLock(out_dir), deterministic(opts.deterministic):
                if opts.overwrite and not opts.resume:
                    remove_run_files(out_dir)
                ctx.barrier()
                result = _train_one(cfg, data, opts, out_dir, log, ctx)
            ctx.close()
            return result
        except BaseException:
            if made:
                _remove_empty_folders(out_dir)
            raise
    check_output(out_dir, opts.resume, opts.overwrite)
    if opts.data_fingerprint is None:
        opts = replace(opts, data_fingerprint=data_fingerprint(data))
    made = not os.path.exists(out_dir)
    try:
        return _train_locked(cfg, data, opts, out_dir, seeds, log)
    except BaseException:
        if made:
            _remove_empty_folders(out_dir)
        raise


def _remove_empty_folders(root: str) -> None:
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        try:
            os.rmdir(folder)
        except OSError:  # not empty: something was written, keep it
            pass


def _train_locked(cfg, data, opts, out_dir, seeds, log) -> dict:
    with RunLock(out_dir):
        if opts.overwrite and not opts.resume:
            removed = remove_run_files(out_dir)
            if removed:
                log(f"--overwrite: removed the earlier run's {len(removed)} file(s) in {out_dir}")
        if seeds == 1:
            return train_one(cfg, data, opts, out_dir, log)
        seed_opts = [TrainOptions(**{**asdict(opts), "seed": opts.seed + k, "devices": None}) for k in range(seeds)]
        folders = [os.path.join(out_dir, f"seed{k}") for k in range(seeds)]
        if opts.devices:
            from .parallel import parse_devices, run_parallel
            devices = parse_devices(opts.devices)
            log(f"{seeds} seeds on {len(devices)} processes ({', '.join(devices)})")
            done, failed = run_parallel([(f"seed{k}", cfg, o, f) for k, (o, f) in enumerate(zip(seed_opts, folders))],
                                        data, devices, log)
            if failed:
                raise RuntimeError(f"{len(failed)} of {seeds} seeds failed ("
                                   + "; ".join(f"{t}: {e}" for t, e in sorted(failed.items()))
                                   + "); the others finished in their folders; --resume continues the failed ones")
            runs = [done[f"seed{k}"] for k in range(seeds)]
        else:
            runs = []
            for o, folder in zip(seed_opts, folders):
                log(f"--- seed {o.seed} ---")
                runs.append(train_one(cfg, data, o, folder, log))
        if any("interrupted_after_epoch" in r for r in runs):
            return runs[-1]
        result = {"schema_version": CONFIG_SCHEMA_VERSION,
                  "select_on": opts.select_on, "selection": SELECTION_TEXT[opts.select_on],
                  "protocol": opts.protocol, "protocol_label": protocol_label(opts),
                  "class_names": list(data.class_names), "seeds": [r["seed"] for r in runs],
                  "per_seed": [{k: r[k] for k in ("seed", "epoch", "accuracy", "weighted_f1")} for r in runs]}
        for key in ("accuracy", "weighted_f1"):
            vals = np.array([r[key] for r in runs])
            result[key] = float(vals.mean())
            result[f"{key}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        result["per_class_f1"] = {n: float(np.mean([r["per_class_f1"][n] for r in runs]))
                                  for n in data.class_names}
        atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(result, indent=2))
        atomic_write_text(os.path.join(out_dir, "config.json"), run_config(cfg, opts).to_json())
        return result


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=not enabled)

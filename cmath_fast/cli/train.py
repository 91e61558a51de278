"""``cmath-fast train | evaluate | predict``."""

from __future__ import annotations

import argparse
import sys
import time

from .common import CLIError, add_fused_argument, check_device_flag, fused_arg, load_data


def parse_sets(items) -> dict:
    import json
    out = {}
    for item in items or []:
        if "=" not in item:
            raise CLIError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _precision_note(opts) -> str:
    if opts.precision != "auto" or not opts.device.startswith("cuda"):
        return ""
    from ..backend import device_rules
    return f" (auto: {device_rules(opts.device).precision_reason})"


def _check_train_flags(args) -> None:
    """Every flag, before any data is read or any folder made: one line naming the flag."""
    import math
    from ..training.loop import check_output
    check_device_flag(args.device)
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--seeds", args.seeds)):
        if value is not None and value < 1:
            raise CLIError(f"{flag}: expected a positive integer, got {value}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise CLIError(f"--lr: expected a finite number > 0, got {args.lr}")
    if args.clip_grad_norm is not None and not (math.isfinite(args.clip_grad_norm) and args.clip_grad_norm >= 0):
        raise CLIError(f"--clip-grad-norm: expected a finite number >= 0 (0 = off), got {args.clip_grad_norm}")
    if not 0.0 < args.valid_fraction < 1.0:
        raise CLIError(f"--valid-fraction: expected a fraction in (0, 1), got {args.valid_fraction}")
    fused_arg(args)
    if args.precision != "auto":
        from ..step import check_precision
        check_precision(args.precision, args.device)
    if args.resume and args.overwrite:
        raise CLIError("--resume and --overwrite: give one (continue the run in --out, or replace it)")
    if args.override and not args.resume:
        raise CLIError("--override goes with --resume (it continues a run although settings differ)")
    if args.devices is not None:
        from ..training.parallel import parse_devices
        parse_devices(args.devices)
        if args.seeds < 2 and args.command == "train":
            raise CLIError("--devices runs seeds in parallel: give --seeds N (N > 1), or --device for one run")
    check_output(args.out, args.resume, args.overwrite)


def _run_setup(args):
    """(data, config, options, notes) of a train or sweep command, flags checked first."""
    from ..data import data_fingerprint
    from ..training import TrainOptions, apply_protocol, config_for_data
    from ..training.configure import read_config_file
    _check_train_flags(args)
    data = load_data(args)
    fields = read_config_file(args.config) if args.config else {}
    fields.update(parse_sets(args.set))
    cfg, notes = config_for_data(data, dataset=args.dataset, overrides=fields)
    opts = TrainOptions(
        epochs=args.epochs if args.epochs is not None else (cfg.epochs if args.data or args.dataset else 25),
        batch_size=cfg.batch_size if args.batch_size is None else args.batch_size,
        lr=cfg.lr if args.lr is None else args.lr,
        weight_decay=cfg.weight_decay, select_on=args.select_on or "valid", seed=args.seed,
        device=args.device, backend=args.backend, fused=fused_arg(args), resume=args.resume, progress=not args.no_progress,
        max_grad_norm=5.0 if args.clip_grad_norm is None else args.clip_grad_norm,
        valid_fraction=args.valid_fraction, on_nonfinite=args.on_nonfinite, override=args.override,
        precision=args.precision, cuda_graphs=args.cuda_graphs, device_data=args.device_data,
        deterministic=args.deterministic, devices=args.devices,
        group_by_length=args.group_by_length, overwrite=args.overwrite,
        data_fingerprint=data_fingerprint(data, args.data))
    explicit = set(fields)
    if args.select_on is not None:
        explicit.add("select_on")
    if args.clip_grad_norm is not None:
        explicit.add("max_grad_norm")
    cfg, opts = apply_protocol(args.protocol, cfg, opts, data, explicit)
    return data, cfg, opts, notes


def _launch_ddp(args) -> int:
    """``train --ddp K``: the same command under torchrun with K processes (one per GPU of the
    machine, or K CPU processes with gloo)."""
    import subprocess
    if args.ddp < 2:
        raise CLIError(f"--ddp: expected at least 2 processes, got {args.ddp}")
    if args.seeds > 1 or args.devices:
        raise CLIError("--ddp trains one run data-parallel: give --seeds 1 and no --devices")
    argv = list(args._argv)
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--ddp":
            skip = True
            continue
        if a.startswith("--ddp="):
            continue
        rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.ddp}",
           "-m", "cmath_fast.cli", *rest]
    print(f"launching: torchrun --standalone --nproc-per-node={args.ddp} -m cmath_fast.cli {' '.join(rest)}",
          flush=True)
    return subprocess.call(cmd)


def cmd_train(args) -> int:
    import os
    from ..training import protocol_label, train
    if getattr(args, "ddp", None):
        return _launch_ddp(args)
    data, cfg, opts, notes = _run_setup(args)
    label = protocol_label(opts)
    print(f"data: {data.layout} ({data.dataset}); " + "; ".join(data.summary()[1:3]))
    for note in data.notes + notes:
        print(f"note: {note}")
    print(f"model: preset {cfg.name}, d_model {cfg.d_model}, centrals {','.join(cfg.centrals)}, "
          f"cross_gate {cfg.cross_gate}, fusion {cfg.fusion}; epochs {opts.epochs}, batch "
          f"{opts.batch_size}, lr {opts.lr}, clip-grad-norm {opts.max_grad_norm or 'off'}, precision "
          f"{opts.resolved_precision()}{_precision_note(opts)}; {label}")
    t0 = time.perf_counter()
    result = train(cfg, data, opts, args.out, seeds=args.seeds)
    dt = time.perf_counter() - t0
    if args.seeds > 1:
        print(f"test accuracy {result['accuracy']:.4f} ± {result['accuracy_std']:.4f}, weighted F1 "
              f"{result['weighted_f1']:.4f} ± {result['weighted_f1_std']:.4f} over {args.seeds} seeds "
              f"[{label}]; {dt:.0f}s; written to {os.path.abspath(args.out)}")
    else:
        print(f"{result['split']} accuracy {result['accuracy']:.4f}, weighted F1 {result['weighted_f1']:.4f} "
              f"at epoch {result['epoch']} [{label}]; {dt:.0f}s; written to {args.out}")
    return 0


def cmd_sweep(args) -> int:
    import os
    from ..training.sweep import sweep
    if args.ddp:
        raise CLIError("--ddp trains one run data-parallel: a sweep runs its cells over --devices instead")
    data, cfg, opts, notes = _run_setup(args)
    for note in data.notes + notes:
        print(f"note: {note}")
    t0 = time.perf_counter()
    table = sweep(cfg, data, opts, args.grid, args.seeds, args.out)
    print(table, end="")
    print(f"{time.perf_counter() - t0:.0f}s; the table is in {os.path.join(args.out, 'sweep.md')} and sweep.csv")
    return 0


def _positive(name: str, value):
    if value is not None and not value > 0:
        raise CLIError(f"{name}: expected a positive number, got {value}")
    return value


def _model_and_data(args):
    """The checkpoint's model and the data it is asked to read, checked against each other."""
    from ..data import load_features
    from ..training import check_data_matches, load_model
    check_device_flag(args.device)
    _positive("--batch-size", args.batch_size)
    if args.out and args.out != "-":  # checked before the work: a bad target costs nothing
        from ..io import output_file
        output_file(args.out)
    elif args.out == "-" and args.command != "predict":
        raise CLIError("--out -: stdout is for predict's JSON lines; give evaluate a file path")
    model, meta = load_model(args.checkpoint, device=args.device, backend=args.backend, fused=fused_arg(args))
    data = load_features(args.data)
    check_data_matches(model.cfg, data)
    from ..features.extract import check_same_extractors
    check_same_extractors(meta.get("extractors") or {}, data.extractors)
    return model, data


def cmd_evaluate(args) -> int:
    import json
    from sklearn.metrics import classification_report
    from ..io import atomic_write_text
    from ..training import evaluate_model, public
    model, data = _model_and_data(args)
    dialogues = data.split(args.split)
    names = model.cfg.labels()
    m = evaluate_model(model, dialogues, args.batch_size, args.device, names, cuda_graphs=args.cuda_graphs)
    if args.out:  # written before anything is printed: a closed pipe cannot lose it
        atomic_write_text(args.out, json.dumps(dict(public(m), split=args.split), indent=2))
    print(f"{args.split}: {len(dialogues)} dialogues, {m['n_utterances']} utterances")
    print(f"accuracy {m['accuracy']:.4f}, weighted F1 {m['weighted_f1']:.4f}")
    print(classification_report(m["_y_true"], m["_y_pred"], labels=list(range(len(names))),
                                target_names=list(names), digits=4, zero_division=0))
    return 0


def prediction_rows(dialogue, probs, names, speakers=None):
    """JSON lines of one dialogue's predictions (with each utterance's speaker when ``speakers``
    names them); a non-finite probability is written as null and the row flagged (the output stays
    valid JSON)."""
    import json
    import math
    for i, p in enumerate(probs):
        finite = all(math.isfinite(float(x)) for x in p)
        row = {"dialogue": dialogue.id, "index": i}
        if speakers is not None:
            row["speaker"] = speakers[i]
        row.update({
               "label": names[int(p.argmax())] if finite else None,
               "probabilities": {n: (round(float(x), 6) if math.isfinite(float(x)) else None)
                                 for n, x in zip(names, p)}})
        if not finite:
            row["nonfinite"] = True
        yield json.dumps(row, allow_nan=False)


def _manifest_data(args):
    """predict --manifest: the checkpoint's model and the manifest's features, extracted with the
    extractors the checkpoint's training features were made with; -> (model, data, speakers by
    dialogue: the manifest's speaker names)."""
    from ..features.extract import extract_data, rebuild_extractors
    from ..training import check_data_matches, load_model
    check_device_flag(args.device)
    _positive("--batch-size", args.batch_size)
    if args.out != "-":
        from ..io import output_file
        output_file(args.out)
    model, meta = load_model(args.checkpoint, device=args.device, backend=args.backend, fused=fused_arg(args))
    extractors = rebuild_extractors(meta.get("extractors") or {}, device=args.device)
    data, manifest = extract_data(args.manifest, extractors, model.cfg.labels(), model.cfg.num_speakers,
                                  args.cache or args.manifest + ".cache", log=lambda m: print(m, file=sys.stderr))
    check_data_matches(model.cfg, data)
    return model, data, {name: [u.speaker for u in rows] for name, rows in manifest.dialogues.items()}


def cmd_predict(args) -> int:
    from ..io import atomic_write_text
    from ..training import predict_dialogues
    speakers = None
    if getattr(args, "manifest", None):
        model, data, speakers = _manifest_data(args)
        dialogues = list(data.dialogues.values())
    else:
        model, data = _model_and_data(args)
        dialogues = data.split(args.split) if args.split != "all" else list(data.dialogues.values())
    names = model.cfg.labels()
    lines = []
    for d, probs in predict_dialogues(model, dialogues, args.batch_size, args.device,
                                       cuda_graphs=args.cuda_graphs):
        lines.extend(prediction_rows(d, probs, names, speakers[d.id] if speakers else None))
    if args.out == "-":  # JSON lines on stdout, everything else on stderr
        sys.stdout.write("\n".join(lines) + ("\n" if lines else ""))
        sys.stdout.flush()
        print(f"{len(lines)} predictions for {len(dialogues)} dialogues written to stdout", file=sys.stderr)
        return 0
    atomic_write_text(args.out, "\n".join(lines) + ("\n" if lines else ""))
    print(f"{len(lines)} predictions for {len(dialogues)} dialogues written to {args.out}")
    return 0


def add_device_arguments(s) -> None:
    s.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    s.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"],
                   help="auto (default): the fused Triton kernels on a GPU of compute capability 8.0 or newer, "
                        "else the PyTorch reference; CMATH_FAST_BACKEND wins over this")
    add_fused_argument(s)


def add_parsers(sub) -> None:
    s = sub.add_parser("train", help="train CMATH (default: the small preset on synthetic data)")
    _add_train_arguments(s)
    s.set_defaults(func=cmd_train)
    s = sub.add_parser("sweep", help="a grid of settings x seeds, in parallel over --devices, into one table")
    _add_train_arguments(s)
    s.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2,...",
                   help="a setting and its values (repeatable): any config field (see --set) or training "
                        "option (lr, batch_size, epochs, weight_decay, max_grad_norm, ...); the cells are "
                        "every combination, each trained for --seeds seeds")
    s.set_defaults(func=cmd_sweep)
    _add_eval_parsers(sub)


def _add_train_arguments(s) -> None:
    s.add_argument("--dataset", choices=["iemocap", "meld"], default=None,
                   help="preset to use (with --data: the file's dataset; without: synthetic data shaped like it)")
    s.add_argument("--data", default=None, help="a feature file (lineage pickle or native safetensors)")
    s.add_argument("--synthetic", choices=["small", "missing", "iemocap", "meld"], default=None,
                   help="without --data: the synthetic set (default small; missing: modalities absent "
                        "or swapped for half the speakers)")
    s.add_argument("--config", default=None, help="a JSON file of CMATHConfig fields")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one config field (JSON value), e.g. --set cross_gate=sum")
    s.add_argument("--epochs", type=int, default=None,
                   help="epochs to train (default: the preset's with --data or --dataset: iemocap 150, meld 50; "
                        "25 on the built-in synthetic data)")
    s.add_argument("--batch-size", type=int, default=None,
                   help="dialogues per step (default: the preset's: iemocap 16, meld 8, the synthetic "
                        "data's tiny 8)")
    s.add_argument("--lr", type=float, default=None,
                   help="Adam's learning rate (default: the preset's: iemocap 1e-4, meld 5e-6, the synthetic "
                        "data's tiny 1e-3)")
    s.add_argument("--out", default="runs/latest",
                   help="the run folder: metrics, history, checkpoints, plots (default runs/latest); a folder "
                        "holding a run needs --resume or --overwrite")
    s.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its own files only)")
    s.add_argument("--protocol", choices=["cmath-fast", "lineage"], default="cmath-fast",
                   help="cmath-fast: the settings as given; lineage: SDT's (IEMOCAP class weights, "
                        "unscaled undetached logit distillation, no clipping, best test epoch); "
                        "flags given explicitly win")
    s.add_argument("--select-on", choices=["valid", "test"], default=None,
                   help="valid (default): a seeded share of the training dialogues; test: the "
                        "lineage's best-test-epoch protocol (optimistic)")
    s.add_argument("--valid-fraction", type=float, default=0.1,
                   help="share of the training dialogues held out for --select-on valid (default 0.1)")
    s.add_argument("--clip-grad-norm", type=float, default=None,
                   help="clip the gradient norm at this value; 0 = off (default 5)")
    s.add_argument("--seeds", type=int, default=1, help="train N seeds and report mean ± std")
    s.add_argument("--seed", type=int, default=0,
                   help="the random seed: weights, batch order, dropout, the validation split (default 0)")
    add_device_arguments(s)
    s.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out (its settings must be the same)")
    s.add_argument("--override", action="store_true",
                   help="with --resume: continue although settings differ (recorded in the run folder)")
    s.add_argument("--precision", choices=["auto", "fp32", "bf16-mixed", "fp16-mixed", "bf16"], default="auto",
                   help="auto (default): bf16-mixed on a GPU with native bf16 (autocast, fp32 master weights), "
                        "fp16-mixed below compute capability 8.0, fp32 on CPU; fp16-mixed adds a gradient "
                        "scaler; bf16: bf16 weights")
    s.add_argument("--on-nonfinite", choices=["stop", "skip"], default="stop",
                   help="a NaN/inf loss: stop the run (earlier checkpoints kept), or skip that step")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="on CUDA, replay the training step and evaluation from CUDA graphs, one per shape "
                        "bucket (default on; off with fp16-mixed and --on-nonfinite skip)")
    s.add_argument("--device-data", choices=["auto", "on", "off"], default="auto",
                   help="hold the training features on the device and gather each batch there, so that a "
                        "step copies only its utterance indices (auto, the default: on a GPU when they take "
                        "at most a quarter of its free memory, always on a CPU); the same batches either way")
    s.add_argument("--group-by-length", action="store_true",
                   help="batches of dialogues of similar length: less padding, a different batch order "
                        "(see `cmath-fast bench padding`)")
    s.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms only (torch.use_deterministic_algorithms): a rerun with "
                        "the same seed is bit-identical on CUDA too, a little slower")
    s.add_argument("--ddp", type=int, default=None, metavar="K",
                   help="train this one run data-parallel on K processes (torchrun with DistributedDataParallel: "
                        "K GPUs with NCCL, or K CPU processes with gloo); --batch-size is the global batch")
    s.add_argument("--devices", default=None,
                   help="run the seeds (and a sweep's cells) in parallel, one process per device: auto (every "
                        "visible GPU), 0,1,... (those GPUs) or cpu:N (N CPU processes, each with its share of "
                        "the cores); each seed in its own seedK folder, the mean ± std as without")


def _add_eval_parsers(sub) -> None:

    for name, helptext in (("evaluate", "metrics and a classification report of a checkpoint"),
                           ("predict", "per-utterance predictions as JSON lines")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--checkpoint", required=True, help="a run folder or a .safetensors checkpoint")
        if name == "predict":
            src = s.add_mutually_exclusive_group(required=True)
            src.add_argument("--data", help="a feature file")
            src.add_argument("--manifest", help="a manifest of raw conversations (CSV or JSON Lines, as for "
                                                "`features extract`): its features are extracted with the "
                                                "extractors the checkpoint's training features were made with; "
                                                "every row is predicted")
            s.add_argument("--cache", default=None,
                           help="with --manifest: the per-utterance feature cache (default MANIFEST.cache)")
        else:
            s.add_argument("--data", required=True)
        s.add_argument("--split", default="test",
                       help="a split the file names (the lineage files and synthetic sets have train and "
                            "test)" + ("; all: every dialogue" if name == "predict" else ""))
        s.add_argument("--batch-size", type=int, default=16, help="dialogues per batch (default 16)")
        add_device_arguments(s)
        s.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                       help="on CUDA, replay inference from CUDA graphs (default on)")
        s.add_argument("--out", required=name == "predict", default=None,
                       help="FILE.jsonl, or - for stdout (the summary line then goes to stderr)"
                       if name == "predict" else "also write the metrics as JSON to this file")
        s.set_defaults(func=cmd_evaluate if name == "evaluate" else cmd_predict)

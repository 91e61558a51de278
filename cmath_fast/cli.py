"""cmath-fast: CMATH for multimodal emotion recognition in conversation — train, evaluate and
predict from IEMOCAP/MELD feature files or synthetic data, inspect and convert data, benchmark
and profile the fused kernels."""

from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

import torch

from .config import CMATHConfig
from .testing import random_batch


class CLIError(Exception):
    """An error reported as one line, without a traceback."""


def _cmd_env(args) -> int:
    from .info import format_report
    print(format_report())
    return 0


def _cmd_smoke(args) -> int:
    from .model import CMATH
    cfg = CMATHConfig.preset(args.preset)
    if args.d_model:
        cfg = cfg.replace(d_model=args.d_model, d_z=args.d_model)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    model = CMATH(cfg, backend=args.backend).to(args.device)
    lengths = torch.randint(1, args.max_len + 1, (args.batch,), generator=gen).tolist()
    lengths[-1] = args.max_len
    text, audio, visual, speakers, lens, labels = random_batch(cfg, lengths, gen, args.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"preset {cfg.name}: d_model {cfg.d_model}, {n_params / 1e6:.2f} M parameters, "
          f"backend {model.backend} ({model.backend_reason}), device {args.device}")
    print(f"batch: {len(lengths)} dialogues, lengths {lengths}")
    t0 = time.perf_counter()
    out = model(text, audio, visual, speakers, lens)
    total, terms = model.loss(out, labels)
    total.backward()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print("loss terms: " + ", ".join(f"{k} {float(v):.4f}" for k, v in terms.items()))
    ok = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    print(f"forward + backward: {dt * 1000:.1f} ms; gradients finite: {ok}")
    return 0 if ok and torch.isfinite(total) else 1


def _load_data(args):
    from .data import load_features, make_synthetic
    if getattr(args, "data", None):
        return load_features(args.data)
    preset = {"iemocap": "iemocap", "meld": "meld"}.get(getattr(args, "dataset", None) or "", "small")
    return make_synthetic(preset, seed=0)


def _parse_sets(items) -> dict:
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


def _cmd_train(args) -> int:
    import os
    from .training import TrainOptions, config_for_data, train
    data = _load_data(args)
    cfg, notes = config_for_data(data, dataset=args.dataset, config_file=args.config,
                                 overrides=_parse_sets(args.set))
    opts = TrainOptions(
        epochs=args.epochs if args.epochs is not None else (cfg.epochs if args.data or args.dataset else 25),
        batch_size=args.batch_size or cfg.batch_size, lr=args.lr or cfg.lr,
        weight_decay=cfg.weight_decay, select_on=args.select_on, seed=args.seed, device=args.device,
        backend=args.backend, resume=args.resume, progress=not args.no_progress)
    print(f"data: {data.layout} ({data.dataset}); " + "; ".join(data.summary()[1:3]))
    for note in data.notes + notes:
        print(f"note: {note}")
    print(f"model: preset {cfg.name}, d_model {cfg.d_model}, centrals {','.join(cfg.centrals)}, "
          f"cross_gate {cfg.cross_gate}, fusion {cfg.fusion}; epochs {opts.epochs}, batch "
          f"{opts.batch_size}, lr {opts.lr}; {opts.select_on}: "
          f"{'best-test-epoch protocol' if opts.select_on == 'test' else 'seeded 10% of train'}")
    t0 = time.perf_counter()
    result = train(cfg, data, opts, args.out, seeds=args.seeds)
    dt = time.perf_counter() - t0
    label = "best-test-epoch protocol (optimistic)" if args.select_on == "test" else "selected on valid"
    if args.seeds > 1:
        print(f"test accuracy {result['accuracy']:.4f} ± {result['accuracy_std']:.4f}, weighted F1 "
              f"{result['weighted_f1']:.4f} ± {result['weighted_f1_std']:.4f} over {args.seeds} seeds "
              f"[{label}]; {dt:.0f}s; written to {os.path.abspath(args.out)}")
    else:
        print(f"{result['split']} accuracy {result['accuracy']:.4f}, weighted F1 {result['weighted_f1']:.4f} "
              f"at epoch {result['epoch']} [{label}]; {dt:.0f}s; written to {args.out}")
    return 0


def _cmd_evaluate(args) -> int:
    import json
    from sklearn.metrics import classification_report
    from .data import load_features
    from .training import check_data_matches, evaluate_model, load_model, public
    model, meta = load_model(args.checkpoint, device=args.device, backend=args.backend)
    data = load_features(args.data)
    check_data_matches(model.cfg, data)
    dialogues = data.split(args.split)
    names = model.cfg.labels()
    m = evaluate_model(model, dialogues, args.batch_size, args.device, names)
    print(f"{args.split}: {len(dialogues)} dialogues, {m['n_utterances']} utterances")
    print(f"accuracy {m['accuracy']:.4f}, weighted F1 {m['weighted_f1']:.4f}")
    print(classification_report(m["_y_true"], m["_y_pred"], labels=list(range(len(names))),
                                target_names=list(names), digits=4, zero_division=0))
    if args.out:
        from .io import atomic_write_text
        atomic_write_text(args.out, json.dumps(dict(public(m), split=args.split), indent=2))
    return 0


def _cmd_predict(args) -> int:
    import json
    from .data import load_features
    from .io import atomic_write_text
    from .training import check_data_matches, load_model, predict_dialogues
    model, _ = load_model(args.checkpoint, device=args.device, backend=args.backend)
    data = load_features(args.data)
    check_data_matches(model.cfg, data)
    dialogues = data.split(args.split) if args.split != "all" else list(data.dialogues.values())
    names = model.cfg.labels()
    lines = []
    for d, probs in predict_dialogues(model, dialogues, args.batch_size, args.device):
        for i, p in enumerate(probs):
            lines.append(json.dumps({"dialogue": d.id, "index": i, "label": names[int(p.argmax())],
                                     "probabilities": {n: round(float(x), 6) for n, x in zip(names, p)}}))
    atomic_write_text(args.out, "\n".join(lines) + ("\n" if lines else ""))
    print(f"{len(lines)} predictions for {len(dialogues)} dialogues written to {args.out}")
    return 0


def _cmd_data(args) -> int:
    from .data import load_features, make_synthetic, save_native
    if args.data_command == "synth":
        data = make_synthetic(args.preset, seed=args.seed, n_dialogues=args.dialogues)
        save_native(data, args.out)
        print(f"wrote {args.out}")
        print("\n".join(data.summary()))
    elif args.data_command == "convert":
        data = load_features(args.input)
        save_native(data, args.output)
        print(f"converted {args.input} ({data.layout}) to {args.output}")
    elif args.data_command == "inspect":
        print("\n".join(load_features(args.file).summary()))
    elif args.data_command == "validate":
        data = load_features(args.file)
        n = sum(len(d) for d in data.dialogues.values())
        print(f"ok: {args.file} ({data.layout}): {len(data.dialogues)} dialogues, {n} utterances")
    return 0


def _use_interpreter_without_cuda() -> None:
    """Fused kernels on a machine without CUDA run in Triton's interpreter (set before import)."""
    import os
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def _cmd_bench(args) -> int:
    import os
    if args.action and args.action[0] == "report":
        from .bench.report import report
        paths = args.action[1:]
        if not paths:
            raise CLIError("bench report: give one or more result CSV files")
        print(report(paths, args.out))
        print(f"\nplots and report.md written to {args.out}")
        return 0
    if args.action:
        raise CLIError(f"bench: unknown action {args.action[0]!r} (expected 'report' or none)")
    if args.count_ops:
        _use_interpreter_without_cuda()
        from .bench.count_ops import count_training_step
        cfg = CMATHConfig.preset(args.config)
        totals, parts = {}, {}
        for name, backend in (("reference", "torch"), ("fused", "triton")):
            totals[name], parts[name], _ = count_training_step(cfg, backend)
        print(f"ops per training step: reference {totals['reference']}, fused {totals['fused']}")
        comps = sorted(set(parts["reference"]) | set(parts["fused"]))
        width = max(len(c) for c in comps)
        print(f"{'component':<{width}}  reference  fused")
        for c in comps:
            print(f"{c:<{width}}  {parts['reference'].get(c, 0):>9}  {parts['fused'].get(c, 0):>5}")
        return 0
    import pytest
    here = os.path.join(os.getcwd(), "bench")
    if not os.path.isdir(here):
        raise CLIError("bench: run it from the source checkout (the folder with bench/), or use "
                       "--count-ops / report")
    return int(pytest.main([here, "-q"] + (["-m", "quick"] if args.quick else [])))


def _cmd_profile(args) -> int:
    from . import profiling
    from .model import CMATH
    from .step import train_step
    if args.backend == "triton":
        _use_interpreter_without_cuda()
    cfg = CMATHConfig.preset(args.config)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = CMATH(cfg, backend=args.backend).to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    lengths = [int(x) for x in args.lengths.split(",")]
    text, audio, visual, speakers, lens, labels = random_batch(cfg, lengths, gen, args.device)

    def step():
        train_step(model, opt, (text, audio, visual, speakers, lens), labels, epoch=1)

    for _ in range(args.warmup):
        step()
    profiling.enable(True)
    cuda = args.device.startswith("cuda")
    print(f"profiling {args.steps} step(s) of preset {cfg.name} ({model.backend}) on {args.device}, "
          f"lengths {lengths}")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
        print("done: NVTX ranges in domain 'cmath' (run under nsys with --capture-range=cudaProfilerApi)")
    else:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    profiling.enable(False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cmath-fast", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("env", help="versions, devices and which backends can run, and why not")
    s.set_defaults(func=_cmd_env)

    s = sub.add_parser("smoke", help="one forward + backward of a preset on a random ragged batch")
    s.add_argument("--preset", default="tiny", choices=["tiny", "iemocap", "meld"])
    s.add_argument("--d-model", type=int, default=None, help="override the preset's d_model")
    s.add_argument("--batch", type=int, default=4)
    s.add_argument("--max-len", type=int, default=12)
    s.add_argument("--backend", default="auto")
    s.add_argument("--device", default="cpu")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_smoke)

    s = sub.add_parser("train", help="train CMATH (default: the small preset on synthetic data)")
    s.add_argument("--dataset", choices=["iemocap", "meld"], default=None,
                   help="preset to use (with --data: the file's dataset; without: synthetic data shaped like it)")
    s.add_argument("--data", default=None, help="a feature file (lineage pickle or native safetensors)")
    s.add_argument("--config", default=None, help="a JSON file of CMATHConfig fields")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one config field (JSON value), e.g. --set cross_gate=sum")
    s.add_argument("--epochs", type=int, default=None)
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--lr", type=float, default=None)
    s.add_argument("--out", default="runs/latest")
    s.add_argument("--select-on", choices=["valid", "test"], default="valid",
                   help="valid: a seeded 10%% of the training dialogues; test: the lineage's "
                        "best-test-epoch protocol (optimistic)")
    s.add_argument("--seeds", type=int, default=1, help="train N seeds and report mean ± std")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu")
    s.add_argument("--backend", default="auto")
    s.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_train)

    for name, helptext in (("evaluate", "metrics and a classification report of a checkpoint"),
                           ("predict", "per-utterance predictions as JSON lines")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--checkpoint", required=True, help="a run folder or a .safetensors checkpoint")
        s.add_argument("--data", required=True)
        s.add_argument("--split", default="test", help="test | train | valid" + (" | all" if name == "predict" else ""))
        s.add_argument("--batch-size", type=int, default=16)
        s.add_argument("--device", default="cpu")
        s.add_argument("--backend", default="auto")
        s.add_argument("--out", required=name == "predict", default=None,
                       help="FILE.jsonl" if name == "predict" else "also write the metrics as JSON")
        s.set_defaults(func=_cmd_evaluate if name == "evaluate" else _cmd_predict)

    s = sub.add_parser("data", help="synthesise, convert, inspect and validate feature files")
    dsub = s.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("synth", help="write synthetic data in the native format")
    d.add_argument("--preset", default="small", choices=["small", "iemocap", "meld"])
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--dialogues", type=int, default=None, help="override the number of dialogues")
    d.add_argument("--out", required=True)
    d = dsub.add_parser("convert", help="any supported file -> the native safetensors format")
    d.add_argument("input")
    d.add_argument("output")
    for name in ("inspect", "validate"):
        d = dsub.add_parser(name, help="layout, counts, dims, speakers, labels" if name == "inspect"
                            else "check a file thoroughly; exit 2 with the reason if it is bad")
        d.add_argument("file")
    s.set_defaults(func=_cmd_data)

    s = sub.add_parser("bench", help="run pytest bench/, count device ops, or report results")
    s.add_argument("action", nargs="*", help="'report CSV...' to turn result CSVs into plots and a table")
    s.add_argument("--count-ops", action="store_true",
                   help="count device operations of one training step, reference vs fused")
    s.add_argument("--config", default="tiny", choices=["tiny", "iemocap", "meld"])
    s.add_argument("--out", default="bench/results/report", help="report: output folder")
    s.add_argument("--quick", action="store_true", help="pytest bench/ -m quick")
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("profile", help="training steps with NVTX ranges (Nsight) or torch.profiler on CPU")
    s.add_argument("--config", default="tiny", choices=["tiny", "iemocap", "meld"])
    s.add_argument("--backend", default="auto")
    s.add_argument("--steps", type=int, default=5)
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    s.add_argument("--lengths", default="12,9,7,4", help="dialogue lengths of the batch, comma-separated")
    s.add_argument("--top", type=int, default=15, help="CPU: rows of the top-operations table")
    s.set_defaults(func=_cmd_profile)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, ValueError, TypeError, OSError, RuntimeError) as exc:
        print(f"cmath-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

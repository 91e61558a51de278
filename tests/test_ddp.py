"""Data-parallel training on the CPU (gloo, two processes, as torchrun starts them): the averaged
gradient equals a single process's on the combined batch for equal and unequal splits, with class
weights on and off; and ``cmath-fast train --ddp 2`` trains, writes from rank 0 only, reports the
metrics a single process computes for its checkpoint, and resumes (another world size is a setting
change)."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist

from cmath_fast.cli import main


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup():
    from cmath_fast.data import make_synthetic
    from cmath_fast.training import config_for_data
    data = make_synthetic("small", seed=0)
    # no dropout and no sampled latent (the concat fusion): the same math in one process and two
    cfg, _ = config_for_data(data, dataset=None, overrides={"dropout": 0.0, "attn_dropout": 0.0, "fusion": "concat"})
    return data, cfg


def _grads(model, dialogues, ids, cfg, scale=None, backend="torch"):
    from cmath_fast.data.device import DeviceDialogues
    from cmath_fast.step import train_step
    store = DeviceDialogues(dialogues, "cpu")
    b = store.index_batch(ids)
    core = getattr(model, "module", model)
    b = (b.with_rows() if core.packs() else b).gather(store)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    total, _ = train_step(model, opt, b.inputs(), b.labels, 3, 0.0, rows=b.rows, loss_scale=scale)
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in core.parameters()], total


def _worker(rank, world, port, chunk, class_weights, backend, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        from torch.nn.parallel import DistributedDataParallel

        from cmath_fast import CMATH
        from cmath_fast.distributed import loss_scales, share
        data, cfg = _setup()
        cfg = cfg.replace(class_weights=tuple(class_weights)) if class_weights else cfg
        dialogues = data.split("train")
        torch.manual_seed(0)
        single = CMATH(cfg, backend=backend)
        torch.manual_seed(0)
        model = DistributedDataParallel(CMATH(cfg, backend=backend))
        mine, empty = share(chunk, rank, world)
        scale = loss_scales(dialogues, chunk, mine, empty, world, class_weights)
        got, _ = _grads(model, dialogues, mine, cfg, scale)
        want, _ = _grads(single, dialogues, chunk, cfg)
        # against the largest gradient entry (a key bias's gradient is zero in exact arithmetic: its
        # relative error would be noise over noise)
        scale = max(float(w.abs().max()) for w in want)
        worst = max(float((g - w).abs().max()) for g, w in zip(got, want)) / scale
        same = all(torch.equal(p, q) for p, q in zip(got, _gather_first(got)))
        with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
            json.dump({"worst": worst, "ranks_equal": same}, fh)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _gather_first(tensors):
    """Rank 0's tensors, broadcast: the ranks' averaged gradients must be bit-identical."""
    out = [t.clone() for t in tensors]
    for t in out:
        dist.broadcast(t, 0)
    return out


CASES = [(split, weighted, "torch") for split in ("equal", "unequal", "empty-share") for weighted in (False, True)]
if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
    CASES.append(("unequal", True, "triton"))  # the fused model (tied weight stacks, packed rows)


@pytest.mark.parametrize("split, weighted, backend", CASES,
                         ids=[f"{s}-{'class-weights' if w else 'no-class-weights'}-{b}" for s, w, b in CASES])
def test_ddp_gradient_equals_the_combined_batch(tmp_path, split, weighted, backend):
    data, cfg = _setup()
    lengths = [len(d) for d in data.split("train")]
    by_len = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if split == "equal":  # two dialogues of the same length on each rank
        same = [i for i in by_len if lengths[i] == lengths[by_len[len(by_len) // 2]]][:4]
        chunk = same if len(same) == 4 else by_len[:4]
    elif split == "unequal":  # a short and a long dialogue against two middling ones
        chunk = [by_len[0], by_len[len(by_len) // 2], by_len[-1], by_len[len(by_len) // 3]]
    else:  # one dialogue: rank 1's share is empty (weighed 0)
        chunk = [by_len[-1]]
    weights = [1.0, 2.5, 0.5, 1.7][:cfg.num_classes] if weighted else None
    ctx = torch.multiprocessing.start_processes(_worker, args=(2, _free_port(), chunk, weights, backend,
                                                             str(tmp_path)), nprocs=2, start_method="spawn", join=False)
    try:
        while not ctx.join():
            pass
    except torch.multiprocessing.ProcessExitedException as exc:
        # gloo's threads can abort a process at exit, after its work; an error before the results
        # were written still fails below (no result file)
        if not all((tmp_path / f"rank{r}.json").is_file() for r in range(2)):
            raise
        print(f"a worker exited abnormally after writing its result: {exc}")
    for rank in range(2):
        res = json.load(open(tmp_path / f"rank{rank}.json"))
        assert res["worst"] <= 1e-6, res
        assert res["ranks_equal"]


def test_train_ddp_2_end_to_end(tmp_path, capsys):
    feats = str(tmp_path / "f.safetensors")
    assert main(["data", "synth", "--preset", "small", "--dialogues", "40", "--out", feats]) == 0
    out = str(tmp_path / "run")
    argv = ["train", "--data", feats, "--epochs", "1", "--batch-size", "6", "--no-progress", "--out", out]
    assert main(argv + ["--ddp", "2"]) == 0
    files = sorted(os.listdir(out))
    assert "metrics.json" in files and "best.safetensors" in files and not any("rank" in f for f in files)
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["world_size"] == 2
    # the metrics the two ranks computed together equal a single process's on the checkpoint
    capsys.readouterr()
    report = str(tmp_path / "eval.json")
    assert main(["evaluate", "--checkpoint", os.path.join(out, "best.safetensors"), "--data", feats,
                 "--split", "test", "--out", report]) == 0
    single = json.load(open(report))
    assert abs(single["accuracy"] - metrics["accuracy"]) < 1e-9
    assert abs(single["weighted_f1"] - metrics["weighted_f1"]) < 1e-9
    # resume with the same world size continues; another world size is a setting change
    assert main(["train", "--data", feats, "--epochs", "2", "--batch-size", "6", "--no-progress", "--out", out,
                 "--resume", "--ddp", "2"]) == 0
    assert len(open(os.path.join(out, "history.csv")).read().splitlines()) == 3
    capsys.readouterr()
    assert main(["train", "--data", feats, "--epochs", "3", "--batch-size", "6", "--no-progress", "--out", out,
                 "--resume"]) == 2
    assert "world_size 2 -> 1" in capsys.readouterr().err


def test_ddp_flags_are_checked(tmp_path, capsys):
    assert main(["train", "--ddp", "1", "--out", str(tmp_path / "r")]) == 2
    assert "--ddp: expected at least 2" in capsys.readouterr().err
    assert main(["train", "--ddp", "2", "--seeds", "2", "--out", str(tmp_path / "r")]) == 2
    assert "--seeds 1" in capsys.readouterr().err

"""CUDA graphs for the training step and for inference, over static shape buckets.

The fused step is launch-bound: hundreds of small kernels, each paying its host-side launch cost
on every call. Replaying a captured CUDA graph pays one. A graph needs static shapes, so batches are
padded up to a few buckets — the number of dialogues up to the run's batch size, the length up to a
multiple of 8 (to 64), of 16 (to 128), then to a power of two — and one graph is captured per
bucket, on first use. Padding is inert: empty dialogues and padded positions weigh nothing in the loss, the metrics
or the gradients (``tests/test_graphs.py`` checks it).

What a captured step needs, and has here: randomness drawn on the device (dropout and the fused
kernels' seeds), a capturable optimiser (``Adam(fused=True, capturable=True)``, the trainer's
default on CUDA), and no host synchronisation — the KL weight is a device tensor set once per
epoch, and the loss terms are static outputs that the caller sums on the device. Two things read
the host and cannot be captured: fp16-mixed's gradient scaler and ``--on-nonfinite skip``; with
either, ``capture_blockers`` says why and the trainer runs the step eagerly.

Capturing a step needs warm-up steps first (lazy state, the Triton and cuBLAS first calls). They
run on the bucket's first batch and are undone — weights, optimiser state and the random number
generators restored — so that a graphed run takes the same steps as an eager one.

A model that packs rows (the fused one: ``cmath_fast.packing``) gets each batch's layout built on
the host, its row count rounded up to a bucket too (``packing.row_bucket``): a graph per (B, L,
rows) bucket, whose layout tensors are static inputs copied in like the features.

Without capture (``capture=False``; always on a CPU) the same code runs: batches are padded to the
same buckets and the step runs eagerly on them, so the bucketing logic is tested on any machine.
"""

from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Tuple

import torch

from ._checks import skip_value_checks
from .losses import beta_at
from .packing import row_bucket
from .data.device import IndexBatch
from .step import autocast_context, train_step, weight_dtype

MAX_STEP_BUCKET = 128


def bucket_length(n: int) -> int:
    """The padded length of a batch whose longest dialogue has n utterances: a multiple of 8 up to
    64, of 16 up to 128, then a power of two (at most 14 graphs up to 128)."""
    n = max(int(n), 1)
    if n <= 64:
        return -(-n // 8) * 8
    if n <= MAX_STEP_BUCKET:
        return -(-n // 16) * 16
    return 1 << (n - 1).bit_length()


def bucket_shape(n_dialogues: int, max_len: int, batch_size: int) -> Tuple[int, int]:
    """(dialogues, length) of the bucket a batch of ``n_dialogues`` (at most ``batch_size``) with
    longest dialogue ``max_len`` is padded to."""
    if n_dialogues > batch_size:
        raise ValueError(f"a batch of {n_dialogues} dialogues exceeds the batch size {batch_size}")
    return batch_size, bucket_length(max_len)


def capture_blockers(device, precision: str, skip_nonfinite: bool = False, optimizer=None) -> List[str]:
    """Why a training step on ``device`` cannot be captured (empty: it can)."""
    reasons = []
    if optimizer is not None and not optimizer.defaults.get("capturable", False):
        reasons.append(f"the optimiser ({type(optimizer).__name__}) is not capturable: give it capturable=True")
    if torch.device(device).type != "cuda":
        reasons.append(f"CUDA graphs need a CUDA device (this run is on {device})")
    if precision == "fp16-mixed":
        reasons.append("fp16-mixed: the gradient scaler reads its found-inf flag on the host every step")
    if skip_nonfinite:
        reasons.append("--on-nonfinite skip reads every step's loss on the host")
    return reasons


def capture(fn, warmup: int = 3, pool=None, before_capture=None):
    """``fn`` warmed up on a side stream (lazy state, first calls), then one call captured in a
    CUDA graph (into ``pool`` when given; ``before_capture()`` runs in between): -> (graph, the
    captured call's output, which every replay overwrites). Checks that read tensor values are
    off throughout."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), skip_value_checks():
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    if before_capture is not None:
        before_capture()
    graph = torch.cuda.CUDAGraph()
    with skip_value_checks(), torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


class _Captured:
    def __init__(self, graph, inputs, outputs):
        self.graph, self.inputs, self.outputs = graph, inputs, outputs


def _copy_into(static, batch, stream=None) -> None:
    """A host batch into the static device buffers (non-blocking from pinned memory): the padded
    features, speakers, lengths and labels, or (an ``IndexBatch``) only the utterance indices and
    lengths (a ``StagedBatch``: and its valid rows); and the packed layout. ``stream``: issued on
    that side stream, after the work already queued on the current one (the last replay, which
    reads these buffers) and before the work queued next (the replay that reads them now)."""
    current = torch.cuda.current_stream() if stream is not None else None
    if stream is not None:
        stream.wait_stream(current)
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        for dst, src in zip(_tensors(static), _tensors(batch)):
            dst.copy_(src, non_blocking=True)
        if static.rows is not None:
            static.rows.copy_(batch.rows)
        if isinstance(batch, IndexBatch) and hasattr(batch, "copied"):
            batch.copied(stream)  # its staging slot may be refilled once these copies have run
    if stream is not None:
        current.wait_stream(stream)


def _key(batch) -> Tuple[int, ...]:
    extra = batch.key() if isinstance(batch, IndexBatch) else ()
    return tuple(batch.shape) + ((batch.rows.n_rows,) if batch.rows is not None else ()) + extra


def _tensors(b):
    if isinstance(b, IndexBatch):
        return b.tensors()
    return (b.text, b.audio, b.visual, b.speakers, b.lengths, b.labels)


class _Bucketed:
    def __init__(self, model, batch_size: int, precision: str, capture: Optional[bool]):
        self.model = model
        self.batch_size = int(batch_size)
        self.precision = precision
        self.device = next(model.parameters()).device
        on_cuda = self.device.type == "cuda"
        self.capture = on_cuda if capture is None else bool(capture)
        if self.capture and not on_cuda:
            raise ValueError(f"capture=True needs the model on a CUDA device, not {self.device}")
        self.graphs: Dict[Tuple[int, ...], _Captured] = {}
        self._pool = None

    @property
    def packs(self) -> bool:
        """Whether the model packs rows now (read per step: switching ``model.pack_rows`` takes
        effect at the next step, in graphs of their own, since a layout's row count is in the key)."""
        packs = getattr(self.model, "packs", None)
        return bool(packs()) if callable(packs) else False

    def bucket(self, n_dialogues: int, max_len: int) -> Tuple[int, int]:
        return bucket_shape(n_dialogues, max_len, self.batch_size)

    def _padded(self, batch):
        """The host batch at its bucket's shape (already there when the batches were collated to
        their buckets, as ``iterate_batches(bucket=...)`` does), with its packed layout in a bucketed
        row count when the model packs rows."""
        b, l = batch.shape
        B, L = self.bucket(b, int(batch.lengths.max()) if b else 1)
        batch = batch.padded(B, max(L, l))
        if self.packs:
            B, L = batch.shape
            batch = batch.with_rows(row_bucket(int(batch.lengths.sum()), B * L))
        return batch

    def _capture(self, key, static, run, warmup: int):
        """Warm ``run(static)`` up, then capture it into this object's memory pool."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph, outputs = capture(lambda: run(static), warmup, self._pool, self._before_capture)
        self.graphs[key] = _Captured(graph, static, outputs)
        return self.graphs[key]

    def _before_capture(self):
        pass


class GraphedTrainer(_Bucketed):
    """Training steps of ``model`` with ``optimizer``, replayed from one CUDA graph per bucket.

    ``step(batch, epoch)`` takes a host batch (``cmath_fast.data.Batch``), pads it to its bucket,
    and returns (total loss, loss terms) as device tensors that the next step overwrites: sum or
    copy them before calling again. Same math as ``cmath_fast.step.train_step``, which it runs.

    ``store`` (``data.device.DeviceDialogues``): the batches are ``IndexBatch``es of it, and the
    graph's static inputs are their utterance indices and lengths (plus the packed layout); the
    features, speakers and labels are gathered from the store inside the graph, so a step copies
    a few kilobytes. ``terms`` (``training.loop.EpochTerms``): each step's loss terms are
    accumulated into it inside the graph. The graphs read the store's and the accumulator's
    tensors by address: this object holds both for as long as it holds the graphs.
    """

    def __init__(self, model, optimizer, *, batch_size: int, precision: str = "fp32",
                 max_grad_norm: float = 0.0, capture: Optional[bool] = None, warmup: int = 2,
                 store=None, terms=None):
        super().__init__(model, batch_size, precision, capture)
        if self.capture:
            blockers = capture_blockers(self.device, precision, optimizer=optimizer)
            if blockers:
                raise ValueError("cannot capture the training step: " + "; ".join(blockers))
        self.opt = optimizer
        self.max_grad_norm = float(max_grad_norm)
        self.warmup = int(warmup)
        self.beta = torch.zeros((), device=self.device, dtype=torch.float32)
        self._beta_value = None
        self.store, self.terms = store, terms
        self._copy_stream = None  # staged rows are copied on a side stream (data.device.StagedBatch)

    def _run(self, b):
        if isinstance(b, IndexBatch):
            b = b.gather(self.store)
        total, terms = train_step(self.model, self.opt, b.inputs(), b.labels, None, self.max_grad_norm,
                                  precision=self.precision, beta=self.beta,
                                  autocast_cache=not self.capture, rows=b.rows)
        if self.terms is not None:
            self.terms.add(terms)
        return total, terms

    def step(self, batch, epoch: Optional[int]):
        beta = beta_at(self.model.cfg, epoch)
        if beta != self._beta_value:  # one small fill per epoch, on the device
            self.beta.fill_(beta)
            self._beta_value = beta
        batch = self._padded(batch)
        dtype = weight_dtype(self.precision)
        if not self.capture:
            return self._run(batch.to(self.device, dtype))
        entry = self.graphs.get(_key(batch))
        if entry is None:
            entry = self._capture(_key(batch), batch.to(self.device, dtype), self._run, self.warmup)
        else:
            staged = isinstance(batch, IndexBatch) and batch.own_rows() is not None and self.device.type == "cuda"
            if staged and self._copy_stream is None:
                self._copy_stream = torch.cuda.Stream(self.device)
            _copy_into(entry.inputs, batch, self._copy_stream if staged else None)
        entry.graph.replay()
        return entry.outputs

    # The warm-up steps are undone: a graphed run takes the same steps as an eager one.
    def _capture(self, key, static, run, warmup):
        self._saved = self._snapshot()
        try:
            return super()._capture(key, static, run, warmup)
        finally:
            self._saved = None

    def _snapshot(self):
        params = [p.detach().clone() for p in self.model.parameters()]
        state = {}
        for p in self.model.parameters():
            st = self.opt.state.get(p)
            if st:
                state[p] = {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in st.items()}
        terms = self.terms.snapshot() if self.terms is not None else None
        return params, state, torch.get_rng_state(), torch.cuda.get_rng_state(self.device), terms

    def _before_capture(self):
        params, state, cpu_rng, cuda_rng, terms = self._saved
        with torch.no_grad():
            for p, saved in zip(self.model.parameters(), params):
                p.copy_(saved)
            for p in self.model.parameters():
                st = self.opt.state.get(p)
                if not st:
                    continue
                before = state.get(p)
                for k, v in st.items():
                    if torch.is_tensor(v):
                        if before is None:
                            v.zero_()  # the state did not exist before: as freshly initialised
                        else:
                            v.copy_(before[k])
        torch.set_rng_state(cpu_rng)
        torch.cuda.set_rng_state(cuda_rng, self.device)
        if self.terms is not None:  # the warm-up steps' terms are undone too
            self.terms.restore(terms)
        self.opt.zero_grad(set_to_none=True)  # the captured backward allocates the gradients


class GraphedPredictor(_Bucketed):
    """Inference calls of ``model`` (in eval mode, without gradients), replayed from one CUDA
    graph per bucket. ``__call__(batch)`` returns the logits (dialogues, length, classes) of the
    batch's real dialogues and positions, a view of a static output that the next call overwrites."""

    def __init__(self, model, *, batch_size: int, precision: str = "fp32", capture: Optional[bool] = None):
        super().__init__(model, batch_size, precision, capture)

    def _run(self, b):
        # no autocast weight cache inside graphs: cached casts would outlive the capture
        with torch.no_grad(), autocast_context(self.precision, self.device.type, cache=not self.capture):
            return self.model(*b.inputs(), **b.model_kwargs()).logits

    def __call__(self, batch):
        self.model.eval()
        b, l = batch.shape
        batch = self._padded(batch)
        dtype = self.model.coarse_head.weight.dtype
        if not self.capture:
            return self._run(batch.to(self.device, dtype))[:b, :l]
        entry = self.graphs.get(_key(batch))
        if entry is None:
            entry = self._capture(_key(batch), batch.to(self.device, dtype), self._run, warmup=1)
        else:
            _copy_into(entry.inputs, batch)
        entry.graph.replay()
        return entry.outputs[:b, :l]


__all__ = ["GraphedTrainer", "GraphedPredictor", "bucket_length", "bucket_shape", "capture_blockers", "capture"]

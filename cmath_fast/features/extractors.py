"""Feature extractors for one modality each, every one described by a dict (``describe()``) that is
stored in the feature file's metadata and keys the per-utterance cache.

- ``TextEncoder``: a Hugging Face ``transformers`` encoder (the lineage's text features are
  RoBERTa-large's, 1024-d), CLS or mean pooling, batched, bf16/fp16 on a GPU.
- ``OpenSmileFunctionals``: openSMILE functionals through the ``opensmile`` package (the lineage's
  IEMOCAP audio features are the 1582 IS10 paralinguistic functionals). openSMILE is free for
  research and education only; commercial use needs audEERING's licence.
- ``SpeechEncoder``: a ``transformers`` speech encoder (wav2vec 2.0, HuBERT, WavLM), mean-pooled,
  the audio resampled to the encoder's rate.
- ``ImageEncoder``: K frames sampled evenly from the utterance's span of a video (PyAV) or of a
  folder of frames, through a ``transformers`` image encoder, mean-pooled.
- ``Missing``: the modality absent: zeros of a given width, recorded as missing.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np

from .manifest import ManifestError, Utterance


class ExtractorError(RuntimeError):
    """An extractor could not be built or could not read a file; the message says which."""


def _need(module: str, what: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExtractorError(f"{what} needs the '{module}' package: pip install 'cmath-fast[features]'") from None


def _transformers(what: str):
    """The transformers package, quiet (its load messages and progress bars off)."""
    transformers = _need("transformers", what)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _model_ref(model: str) -> str:
    """A model's name on the hub as given, or a local folder as an absolute path (so that the
    record in the feature file and in checkpoints finds it again from anywhere)."""
    return os.path.abspath(model) if os.path.isdir(model) else model


def _load(what: str, processor: str, model: str, flag: str, device: Optional[str]):
    """(processor, model in eval mode on the device, device) of a transformers encoder: its
    ``processor`` class (AutoFeatureExtractor, AutoImageProcessor) and AutoModel; a model that
    cannot be loaded is an ExtractorError naming ``flag``."""
    transformers = _transformers(what)
    dev = _torch_device(device)
    try:
        proc = getattr(transformers, processor).from_pretrained(model)
        net = transformers.AutoModel.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise ExtractorError(f"{flag} {model!r}: cannot load it ({str(exc).splitlines()[0]})") from None
    return proc, net.to(dev).eval(), dev


def _torch_device(device: Optional[str]):
    import torch
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _model_dtype(device):
    import torch
    if device.type != "cuda":
        return torch.float32
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def _revision(model) -> Optional[str]:
    return getattr(getattr(model, "config", None), "_commit_hash", None)


class Missing:
    """The modality absent: zeros of ``dim`` per utterance, recorded as missing."""

    def __init__(self, modality: str, dim: int):
        if dim < 1:
            raise ExtractorError(f"--{modality}-dim: expected a positive width, got {dim}")
        self.modality, self.dim = modality, int(dim)

    def describe(self) -> dict:
        return {"name": "none", "missing": True, "dim": self.dim}

    def __call__(self, utts: Sequence[Utterance]) -> np.ndarray:
        return np.zeros((len(utts), self.dim), dtype=np.float32)


class TextEncoder:
    """Utterance transcripts through a ``transformers`` encoder: the CLS token's last hidden state
    (``pooling="cls"``) or the mean over the tokens (``"mean"``); transcripts longer than the
    encoder's maximum are truncated and counted (``truncated``)."""

    def __init__(self, model: str, pooling: str = "cls", device: Optional[str] = None, batch_size: int = 16,
                 max_length: Optional[int] = None):
        if pooling not in ("cls", "mean"):
            raise ExtractorError(f"--text-pooling: expected cls or mean, got {pooling!r}")
        transformers = _transformers("the text encoder")
        import torch
        self.device = _torch_device(device)
        self.dtype = _model_dtype(self.device)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(model)
            self.model = transformers.AutoModel.from_pretrained(model, dtype=self.dtype)
        except (OSError, ValueError) as exc:
            raise ExtractorError(f"--text-model {model!r}: cannot load it ({str(exc).splitlines()[0]})") from None
        self.model.to(self.device).eval()
        self.name, self.pooling, self.batch_size = _model_ref(model), pooling, int(batch_size)
        limit = getattr(self.model.config, "max_position_embeddings", 512)
        self.max_length = int(max_length or min(self.tokenizer.model_max_length or limit, limit))
        if getattr(self.model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            self.max_length = min(self.max_length, limit - 2)  # RoBERTa's positions start after the padding id
        self.dim = int(self.model.config.hidden_size)
        self.truncated = 0
        self._torch = torch

    def describe(self) -> dict:
        return {"name": "transformers-text", "model": self.name, "revision": _revision(self.model),
                "pooling": self.pooling, "max_length": self.max_length, "dim": self.dim}

    def __call__(self, utts: Sequence[Utterance]) -> np.ndarray:
        torch = self._torch
        out = []
        for i in range(0, len(utts), self.batch_size):
            texts = [u.text for u in utts[i:i + self.batch_size]]
            full = self.tokenizer(texts, truncation=False)["input_ids"]
            self.truncated += sum(len(ids) > self.max_length for ids in full)
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            with torch.no_grad():
                hidden = self.model(**enc).last_hidden_state.float()
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                m = enc["attention_mask"][..., None].float()
                pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
            out.append(pooled.cpu().numpy())
        return np.concatenate(out, axis=0).astype(np.float32)


def read_audio(u: Utterance, rate: Optional[int] = None) -> tuple:
    """(mono float32 samples of the utterance's span, sample rate), resampled to ``rate`` when given."""
    sf = _need("soundfile", "reading audio")
    try:
        info = sf.info(u.audio)
        start = int(round((u.start or 0.0) * info.samplerate))
        stop = int(round(u.end * info.samplerate)) if u.end is not None else None
        x, sr = sf.read(u.audio, start=start, stop=stop, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError if hasattr(sf, "LibsndfileError") else RuntimeError) as exc:
        raise ManifestError(f"row {u.row}: unreadable audio {u.audio!r} ({str(exc).splitlines()[0]})") from None
    x = x.mean(axis=1)  # downmixed to mono
    if x.size == 0:
        raise ManifestError(f"row {u.row}: audio span {u.span()} of {u.audio!r} holds no samples")
    if rate is not None and rate != sr:
        from math import gcd

        from scipy.signal import resample_poly
        g = gcd(int(rate), int(sr))
        x = resample_poly(x, rate // g, sr // g).astype(np.float32)
        sr = rate
    return x, sr


class OpenSmileFunctionals:
    """openSMILE functionals of each utterance's audio span (``opensmile.Smile``, one feature set).
    openSMILE is free for research and education only (audEERING's licence)."""

    LICENCE = "openSMILE is free for research and education only; commercial use needs audEERING's licence"

    def __init__(self, feature_set: str = "IS10"):
        opensmile = _need("opensmile", "the openSMILE audio features")
        sets = {s.name.lower(): s for s in opensmile.FeatureSet}
        aliases = {"is10": "is10_paraling", "is09": "is09_emotion", "is13": "is13_compare"}
        key = feature_set.lower()
        key = key if key in sets else aliases.get(key, key)
        if key not in sets:
            raise ExtractorError(f"--audio opensmile:{feature_set}: unknown feature set; opensmile offers "
                                 f"{', '.join(sorted(s.name for s in opensmile.FeatureSet))}")
        self.feature_set = sets[key]
        self.smile = opensmile.Smile(feature_set=self.feature_set, feature_level=opensmile.FeatureLevel.Functionals)
        self.dim = len(self.smile.feature_names)
        self.version = getattr(opensmile, "__version__", None)

    def describe(self) -> dict:
        return {"name": "opensmile", "feature_set": self.feature_set.name, "level": "functionals",
                "package_version": self.version, "dim": self.dim}

    def one(self, u: Utterance) -> np.ndarray:
        x, sr = read_audio(u)
        return np.asarray(self.smile.process_signal(x, sr), dtype=np.float32).reshape(-1)

    def __call__(self, utts: Sequence[Utterance]) -> np.ndarray:
        return np.stack([self.one(u) for u in utts]).astype(np.float32)


class SpeechEncoder:
    """A ``transformers`` speech encoder's last hidden states, mean-pooled over each utterance's
    span, the audio resampled to the encoder's sampling rate."""

    def __init__(self, model: str, device: Optional[str] = None):
        import torch
        self.processor, self.model, self.device = _load("the speech encoder", "AutoFeatureExtractor", model,
                                                        "--audio-model", device)
        self.name, self.rate = _model_ref(model), int(self.processor.sampling_rate)
        self.dim = int(self.model.config.hidden_size)
        self._torch = torch

    def describe(self) -> dict:
        return {"name": "transformers-speech", "model": self.name, "revision": _revision(self.model),
                "pooling": "mean", "sample_rate": self.rate, "dim": self.dim}

    def __call__(self, utts: Sequence[Utterance]) -> np.ndarray:
        out = []
        for u in utts:
            x, _ = read_audio(u, self.rate)
            inputs = self.processor(x, sampling_rate=self.rate, return_tensors="pt").to(self.device)
            with self._torch.no_grad():
                out.append(self.model(**inputs).last_hidden_state.float().mean(1)[0].cpu().numpy())
        return np.stack(out).astype(np.float32)


def read_frames(u: Utterance, k: int) -> List["object"]:
    """K frames (PIL images) sampled evenly over the utterance's span of its video: a video file
    (decoded with PyAV) or a folder of frames (sorted by name, at the row's fps)."""
    Image = _need("PIL.Image", "reading frames")
    if os.path.isdir(u.video):
        names = sorted(f for f in os.listdir(u.video) if f.lower().endswith((".png", ".jpg", ".jpeg", ".bmp")))
        first = int((u.start or 0.0) * u.fps)
        last = int(u.end * u.fps) if u.end is not None else len(names)
        names = names[first:max(last, first + 1)]
        if not names:
            raise ManifestError(f"row {u.row}: no frames of {u.video!r} in span {u.span()}")
        picks = [names[int(i)] for i in np.linspace(0, len(names) - 1, k).round()]
        return [Image.open(os.path.join(u.video, n)).convert("RGB") for n in picks]
    av = _need("av", "decoding video")
    frames = []
    try:
        with av.open(u.video) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else 0.0
                if u.start is not None and t < u.start:
                    continue
                if u.end is not None and t > u.end:
                    break
                frames.append(frame.to_image())
    except (av.error.FFmpegError if hasattr(av, "error") else OSError, OSError) as exc:
        raise ManifestError(f"row {u.row}: unreadable video {u.video!r} ({str(exc).splitlines()[0]})") from None
    if not frames:
        raise ManifestError(f"row {u.row}: no frames of {u.video!r} in span {u.span()}")
    return [frames[int(i)] for i in np.linspace(0, len(frames) - 1, k).round()]


class ImageEncoder:
    """K frames of each utterance through a ``transformers`` image encoder (its pooled output, or
    the mean of its last hidden states), mean-pooled over the frames."""

    def __init__(self, model: str, frames: int = 8, device: Optional[str] = None):
        import torch
        if frames < 1:
            raise ExtractorError(f"--frames: expected at least 1, got {frames}")
        self.processor, self.model, self.device = _load("the image encoder", "AutoImageProcessor", model,
                                                        "--visual-model", device)
        self.name, self.frames = _model_ref(model), int(frames)
        self.dim = int(getattr(self.model.config, "hidden_size", 0) or self.model.config.hidden_sizes[-1])
        self._torch = torch

    def describe(self) -> dict:
        return {"name": "transformers-image", "model": self.name, "revision": _revision(self.model),
                "frames": self.frames, "pooling": "mean over frames", "dim": self.dim}

    def __call__(self, utts: Sequence[Utterance]) -> np.ndarray:
        out = []
        for u in utts:
            inputs = self.processor(images=read_frames(u, self.frames), return_tensors="pt").to(self.device)
            with self._torch.no_grad():
                res = self.model(**inputs)
            pooled = getattr(res, "pooler_output", None)
            if pooled is None:
                pooled = res.last_hidden_state.mean(1)
            out.append(pooled.reshape(pooled.shape[0], -1).float().mean(0).cpu().numpy())
        return np.stack(out).astype(np.float32)

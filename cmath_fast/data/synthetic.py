"""Synthetic MER data in the schema of the real files, for the offline default run and the tests.

What makes it a fair stand-in for the asymmetric-fusion question:
- emotions follow speaker-dependent dynamics: each speaker keeps their own emotion with some
  inertia, catches the previous speaker's emotion sometimes (contagion), and otherwise draws from a
  speaker-specific prior — so the conversation context carries information;
- each modality is a noisy view of the label in a low-dimensional latent space embedded in the
  modality's raw dimension, with its own quality (text best, audio middling, visual worst);
- some utterances have one modality corrupted (the signal replaced by loud noise), so a model that
  weighs modalities per utterance has something real to win.

The ``missing`` preset is the case the asymmetric design is meant for, and that real corpora have
(a face out of frame, a muted microphone, a misaligned transcript): for some speakers, an
utterance loses one modality — absent (all zeros) or replaced by the features of another
utterance from anywhere in the corpus. Its recipe was fixed before any model ran on it:
half the speakers of the corpus are affected; 50 % of their utterances lose one modality, drawn
uniformly from text, audio and visual; half of those are zeros and half are swaps (so about 25 %
of all utterances are damaged); the noise-corruption of the other presets is off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ..config import IEMOCAP_CLASSES, MELD_CLASSES
from .dataset import Dialogue, MERData


@dataclass(frozen=True)
class SynthSpec:
    n_dialogues: int
    n_test: int
    min_len: int
    max_len: int
    dims: Tuple[int, int, int]
    num_speakers: int
    speakers_per_dialogue: Tuple[int, int]
    class_names: Tuple[str, ...]
    latent_dim: int = 8
    noise: Tuple[float, float, float] = (1.8, 2.4, 3.2)  # text, audio, visual latent noise
    p_corrupt: float = 0.15
    inertia: float = 0.65
    contagion: float = 0.15
    p_affected_speaker: float = 0.0  # share of the corpus's speakers whose utterances lose a modality
    p_missing: float = 0.0  # per utterance of an affected speaker: one modality is lost
    p_swap: float = 0.5  # of the lost ones: replaced by another utterance's features (else zeros)


SMALL_CLASSES = ("happy", "sad", "neutral", "angry")
PRESETS = {
    # The default of `cmath-fast train`: trains in about a minute on 2 CPU cores.
    "small": SynthSpec(n_dialogues=200, n_test=40, min_len=6, max_len=24, dims=(24, 20, 12),
                       num_speakers=2, speakers_per_dialogue=(2, 2), class_names=SMALL_CLASSES),
    # The small preset's shape with missing or swapped modalities for half the speakers (see above).
    "missing": SynthSpec(n_dialogues=200, n_test=40, min_len=6, max_len=24, dims=(24, 20, 12),
                         num_speakers=8, speakers_per_dialogue=(2, 2), class_names=SMALL_CLASSES,
                         p_corrupt=0.0, p_affected_speaker=0.5, p_missing=0.5, p_swap=0.5),
    # Shaped like IEMOCAP (SDT features): 151 dialogues, 31 in test, long dialogues, 2 speakers.
    "iemocap": SynthSpec(n_dialogues=151, n_test=31, min_len=24, max_len=110, dims=(1024, 1582, 342),
                         num_speakers=2, speakers_per_dialogue=(2, 2), class_names=IEMOCAP_CLASSES),
    # Shaped like MELD: 1433 short dialogues, 280 in test, 9 speaker slots, 1-4 speakers each.
    "meld": SynthSpec(n_dialogues=1433, n_test=280, min_len=1, max_len=24, dims=(1024, 300, 342),
                      num_speakers=9, speakers_per_dialogue=(1, 4), class_names=MELD_CLASSES),
}


def make_synthetic(preset: str = "small", seed: int = 0, n_dialogues: int = None) -> MERData:
    """Generate a synthetic data set shaped like ``preset`` ("small", "iemocap", "meld")."""
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; expected one of {sorted(PRESETS)}")
    spec = PRESETS[preset]
    rng = np.random.default_rng(seed)
    if n_dialogues is not None and (isinstance(n_dialogues, bool) or not isinstance(n_dialogues, int)
                                    or n_dialogues < 2):
        raise ValueError(f"--dialogues: expected an integer >= 2 (training and test dialogues), got {n_dialogues}")
    n_total = spec.n_dialogues if n_dialogues is None else n_dialogues
    n_test = max(1, round(n_total * spec.n_test / spec.n_dialogues))
    C, k = len(spec.class_names), spec.latent_dim

    # Shared structure: class means in the latent space, one embedding per modality, and a prior
    # over emotions per speaker (speaker-dependent tendencies).
    means = rng.normal(size=(C, k))
    embeds = [rng.normal(size=(k, D)) / np.sqrt(k) for D in spec.dims]
    speaker_prior = rng.dirichlet(np.full(C, 4.0), size=spec.num_speakers)
    affected = rng.random(spec.num_speakers) < spec.p_affected_speaker

    dialogues = {}
    for n in range(n_total):
        L = int(rng.integers(spec.min_len, spec.max_len + 1))
        lo, hi = spec.speakers_per_dialogue
        cast = rng.choice(spec.num_speakers, size=int(rng.integers(lo, hi + 1)), replace=False)
        speakers = np.empty(L, dtype=np.int64)
        labels = np.empty(L, dtype=np.int64)
        state = {int(s): int(rng.choice(C, p=speaker_prior[s])) for s in cast}
        current = int(rng.choice(cast))
        for i in range(L):
            if i and len(cast) > 1 and rng.random() < 0.8:
                current = int(rng.choice([s for s in cast if s != current]))
            r = rng.random()
            if i and r < spec.contagion:
                state[current] = int(labels[i - 1])
            elif r > spec.contagion + spec.inertia:
                state[current] = int(rng.choice(C, p=speaker_prior[current]))
            speakers[i], labels[i] = current, state[current]
        feats = []
        corrupt_mod = np.where(rng.random(L) < spec.p_corrupt, rng.integers(0, 3, size=L), -1)
        for m, (D, emb, sigma) in enumerate(zip(spec.dims, embeds, spec.noise)):
            latent = means[labels] + sigma * rng.normal(size=(L, k))
            bad = corrupt_mod == m
            latent[bad] = 3.0 * rng.normal(size=(int(bad.sum()), k))
            x = latent @ emb + 0.1 * rng.normal(size=(L, D))
            feats.append(x.astype(np.float32))
        vid = f"dlg{n:04d}"
        dialogues[vid] = Dialogue(vid, feats[0], feats[1], feats[2], speakers, labels)

    if spec.p_missing > 0:
        _drop_modalities(dialogues, spec, affected, rng)

    ids = list(dialogues)
    order = rng.permutation(len(ids))
    test = sorted(ids[i] for i in order[:n_test])
    train = sorted(ids[i] for i in order[n_test:])
    return MERData(dialogues=dialogues, splits={"train": train, "test": test},
                   class_names=spec.class_names, num_speakers=spec.num_speakers,
                   dataset=f"synthetic-{preset}", layout="synthetic",
                   notes=[f"synthetic data, preset {preset!r}, seed {seed}"])


def _drop_modalities(dialogues, spec: SynthSpec, affected: np.ndarray, rng) -> None:
    """For affected speakers' utterances: with p_missing one modality is lost — zeros, or (p_swap)
    the features of a random utterance of the corpus (drawn from the clean features)."""
    pool = [(vid, i) for vid, d in dialogues.items() for i in range(len(d))]
    clean = {vid: [d.text.copy(), d.audio.copy(), d.visual.copy()] for vid, d in dialogues.items()}
    for vid, d in dialogues.items():
        feats = [d.text, d.audio, d.visual]
        for i in range(len(d)):
            if not affected[d.speakers[i]] or rng.random() >= spec.p_missing:
                continue
            m = int(rng.integers(0, 3))
            if rng.random() < spec.p_swap:
                src_vid, j = pool[int(rng.integers(len(pool)))]
                feats[m][i] = clean[src_vid][m][j]
            else:
                feats[m][i] = 0.0

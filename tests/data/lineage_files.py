"""Small feature pickles in each public layout, written by the tests themselves."""

import pickle

import numpy as np


def lineage_tuple(layout, *, dims=(6, 5, 4), lengths=(3, 1, 4, 2), list_features=False,
                  one_hot_speakers=None, set_splits=False, n_classes=None, seed=0):
    """layout: 'sdt-iemocap' (12), 'sdt-meld' (13), 'mmgcn-iemocap' (9), 'mmgcn-meld' (10)."""
    rng = np.random.default_rng(seed)
    meld = layout.endswith("meld")
    n_classes = n_classes or (7 if meld else 6)
    one_hot = meld if one_hot_speakers is None else one_hot_speakers
    ids = [f"Ses0{i}" if not meld else i for i in range(len(lengths))]
    video_ids, speakers, labels, sentences = {}, {}, {}, {}
    feats = [{}, {}, {}]
    for vid, n in zip(ids, lengths):
        video_ids[vid] = [f"{vid}_u{j}" for j in range(n)]
        spk_idx = rng.integers(0, 9 if one_hot else 2, size=n)
        if one_hot:
            speakers[vid] = [list(np.eye(9)[s]) for s in spk_idx]
        else:
            speakers[vid] = ["MF"[s] for s in spk_idx]
        labels[vid] = [np.int64(x) for x in rng.integers(0, n_classes, size=n)]
        sentences[vid] = [f"utterance {j}" for j in range(n)]
        for m, dim in enumerate(dims):
            x = rng.normal(size=(n, dim)).astype(np.float32)
            feats[m][vid] = [row for row in x] if list_features else x
    train, test = ids[:-1], ids[-1:]
    if set_splits:
        train, test = set(train), set(test)
    text, audio, visual = feats
    if layout.startswith("sdt"):
        extra = [{vid: x for vid, x in text.items()} for _ in range(3)]
        items = [video_ids, speakers, labels, text, *extra, audio, visual, sentences, train, test]
        if meld:
            items.append(None)
    else:
        items = [video_ids, speakers, labels, text, audio, visual, sentences, train, test]
        if meld:
            items.append(None)
    return tuple(items)


def write_pickle(path, obj, protocol=2):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)
    return path

"""Tiny real extractors and recordings, made offline: a BERT-style text encoder and a ViT image
encoder built from configs with random weights and saved to a folder (used by path, as a hub name
would be), WAV files written with soundfile, a short video written with PyAV."""

import numpy as np
import pytest

for _module in ("transformers", "opensmile", "soundfile", "av"):
    pytest.importorskip(_module, reason="the features extra is not installed (pip install 'cmath-fast[features]')")

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz") + \
    ["hello", "world", "i", "am", "happy", "sad", "the", "you", "are", "not", "so", "very", "##s", "##ing"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    import torch
    import transformers
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    text = root / "text"
    tok = transformers.BertTokenizer(vocab_file=str(vocab))
    cfg = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16)
    transformers.BertModel(cfg).save_pretrained(str(text))
    tok.save_pretrained(str(text))
    image = root / "image"
    vcfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=48)
    transformers.ViTModel(vcfg).save_pretrained(str(image))
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(image))
    return str(text), str(image)


@pytest.fixture(scope="session")
def tiny_speech_model(tmp_path_factory):
    """A wav2vec 2.0 encoder at 16 kHz, random weights, saved to a folder."""
    import torch
    import transformers
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "speech"
    cfg = transformers.Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                      conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 4),
                                      num_feat_extract_layers=2, num_conv_pos_embeddings=8,
                                      num_conv_pos_embedding_groups=2, vocab_size=8)
    transformers.Wav2Vec2Model(cfg).save_pretrained(str(path))
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(str(path))
    return str(path)


def write_wav(path, seconds, freq, rate=16000, channels=1):
    import soundfile as sf
    t = np.arange(int(seconds * rate)) / rate
    x = 0.2 * np.sin(2 * np.pi * (freq * t + 60 * t * t)) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))  # a chirp
    x = np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)
    sf.write(str(path), x.astype(np.float32), rate)


def write_video(path, seconds=3.0, fps=10, size=(48, 64)):
    import av
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.height, s.width = size
        s.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            img = np.zeros(size + (3,), dtype=np.uint8)
            img[..., i % 3] = (i * 8) % 256
            for pk in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)


@pytest.fixture
def recordings(tmp_path):
    """Three dialogues: d1 cut from one stereo recording by start/end and filmed; d2 and d3 one WAV
    per utterance. Returns the manifest's path."""
    write_wav(tmp_path / "call.wav", 3.0, 200, channels=2)
    write_video(tmp_path / "call.mp4")
    rows = [("d1", 0, "Ann", "hello world", "call.wav", "call.mp4", 0.0, 1.0, "happy", "train"),
            ("d1", 1, "Bob", "i am sad", "call.wav", "call.mp4", 1.0, 2.0, "sad", "train"),
            ("d1", 2, "Ann", "you are not so sad", "call.wav", "call.mp4", 2.0, 3.0, "neu", "train")]
    for d, split, n in (("d2", "train", 3), ("d3", "test", 2)):
        for i in range(n):
            name = f"{d}_{i}.wav"
            write_wav(tmp_path / name, 0.6 + 0.2 * i, 150 + 40 * i)
            rows.append((d, i, "Cy" if i % 2 else "Di", "the happy world" if i else "sad", name, "call.mp4",
                         None, None, ["ang", "happy", "sad"][i % 3], split))
    lines = ["dialogue,utterance,speaker,text,audio,video,start,end,label,split"]
    for r in rows:
        lines.append(",".join("" if v is None else str(v) for v in r))
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)

"""``cmath-fast features extract MANIFEST --out FILE.safetensors``: features from one's own
conversations (``cmath_fast.features``; the optional extra ``cmath-fast[features]``)."""

from __future__ import annotations

import sys


def cmd_features(args) -> int:
    from ..features.extract import ExtractOptions, extract
    from ..io import output_file
    output_file(args.out)  # before the work
    opts = ExtractOptions(
        text_model=args.text_model, text_pooling=args.text_pooling, audio=args.audio, audio_model=args.audio_model,
        audio_dim=args.audio_dim, visual=args.visual, visual_model=args.visual_model, visual_dim=args.visual_dim,
        frames=args.frames, dataset=args.dataset,
        classes=args.classes.split(",") if args.classes else None, num_speakers=args.num_speakers,
        device=args.device, batch_size=args.batch_size, cache=args.cache)
    def bars(desc, total):
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit="utt", dynamic_ncols=True)
    progress = bars if not args.no_progress and sys.stderr.isatty() else None
    data = extract(args.manifest, args.out, opts, progress=progress)
    n = sum(len(d) for d in data.dialogues.values())
    print(f"wrote {args.out}: {len(data.dialogues)} dialogues, {n} utterances, dims "
          + ", ".join(f"{k} {v}" for k, v in data.dims.items()))
    for m, desc in data.extractors.items():
        print(f"  {m}: " + ", ".join(f"{k} {v}" for k, v in desc.items() if v is not None))
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("features", help="features from your own conversations (a manifest of utterances)")
    fsub = s.add_subparsers(dest="features_command", required=True)
    e = fsub.add_parser(
        "extract", help="a manifest (CSV or JSON Lines: dialogue, utterance, speaker, text, audio, video, start, "
                        "end, fps, label, split) -> a native feature file that train, validate and predict read")
    e.add_argument("manifest")
    e.add_argument("--out", required=True, help="the feature file to write (.safetensors)")
    e.add_argument("--text-model", default="roberta-large",
                   help="a transformers encoder's name or local path (default roberta-large, 1024-d: the "
                        "lineage's text features)")
    e.add_argument("--text-pooling", choices=["cls", "mean"], default="cls")
    e.add_argument("--audio", default="opensmile:IS10",
                   help="opensmile:FEATURE_SET (default IS10: 1582 functionals, the lineage's IEMOCAP audio "
                        "features; openSMILE is free for research only) or none")
    e.add_argument("--audio-model", default=None,
                   help="a transformers speech encoder (wav2vec 2.0, HuBERT, WavLM) instead of openSMILE")
    e.add_argument("--audio-dim", type=int, default=1582, help="the width written for --audio none")
    e.add_argument("--visual", default="none",
                   help="none (default: the modality written as missing) or a transformers image encoder")
    e.add_argument("--visual-model", default=None, help="a transformers image encoder for the sampled frames")
    e.add_argument("--visual-dim", type=int, default=342, help="the width written for --visual none (default "
                                                                  "342, the IEMOCAP preset's)")
    e.add_argument("--frames", type=int, default=8, help="frames sampled per utterance (default 8)")
    e.add_argument("--dataset", choices=["iemocap", "meld"], default="iemocap",
                   help="whose class names and speaker count (default iemocap: six classes, two speakers)")
    e.add_argument("--classes", default=None, help="comma-separated class names instead of the dataset's")
    e.add_argument("--num-speakers", type=int, default=None,
                   help="speakers per dialogue the model allows (default: the dataset's)")
    e.add_argument("--device", default=None, help="where the encoders run (default: the GPU when there is one)")
    e.add_argument("--batch-size", type=int, default=16, help="transcripts per text-encoder call")
    e.add_argument("--cache", default=None,
                   help="the per-utterance cache folder (default OUT.cache): an interrupted extraction resumes")
    e.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_features)

"""``cmath-fast data synth | convert | inspect | validate``."""

from __future__ import annotations


def cmd_data(args) -> int:
    from ..data import load_features, make_synthetic, save_native
    if args.data_command == "synth":
        from ..io import output_file
        output_file(args.out)  # before the work
        data = make_synthetic(args.preset, seed=args.seed, n_dialogues=args.dialogues)
        save_native(data, args.out)
        print(f"wrote {args.out}")
        print("\n".join(load_features(args.out).summary()))  # as inspect will show it
    elif args.data_command == "convert":
        from ..io import output_file
        output_file(args.output)
        data = load_features(args.input)
        save_native(data, args.output)
        print(f"converted {args.input} ({data.layout}) to {args.output}")
    elif args.data_command == "inspect":
        print("\n".join(load_features(args.file).summary()))
    elif args.data_command == "validate":
        data = load_features(args.file)
        data.check_trainable()  # validate fails on whatever train would fail on
        n = sum(len(d) for d in data.dialogues.values())
        print(f"ok: {args.file} ({data.layout}, {data.dataset}): {len(data.dialogues)} dialogues, {n} utterances")
        for note in data.notes:
            print(f"note: {note}")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("data", help="synthesise, convert, inspect and validate feature files")
    dsub = s.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("synth", help="write synthetic data in the native format")
    d.add_argument("--preset", default="small", choices=["small", "missing", "iemocap", "meld"])
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--dialogues", type=int, default=None,
                   help="the number of dialogues, at least 2 (default: the preset's)")
    d.add_argument("--out", required=True)
    d = dsub.add_parser("convert", help="any supported file -> the native safetensors format")
    d.add_argument("input")
    d.add_argument("output")
    for name in ("inspect", "validate"):
        d = dsub.add_parser(name, help="layout, counts, dims, speakers, labels" if name == "inspect"
                            else "check a file thoroughly; exit 2 with the reason if it is bad")
        d.add_argument("file")
    s.set_defaults(func=cmd_data)

"""`usjepa data <tool>`: data tools. `preview` shows what the model will receive from files, folders or a config;
`prepare` writes a config's data, preprocessed once, into shards that `data.source=prepared` reads."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_tool", metavar="TOOL")
    p = sub.add_parser(
        "preview", help="write each item's region and model input, a contact sheet and a table of skipped items",
        description="For each item (frame, or pane of a multi-pane frame) write <name>_region.png (the region in the "
                    "source file's pixel grid, 0/255) and <name>_input.png (what the model receives, through the "
                    "training data path), one contact sheet preview.png (region outlined in green, burned-in parts "
                    "left out in magenta, colour marks to inpaint in cyan, Doppler outlined in orange), items.csv "
                    "and skipped.csv (also printed). Inputs: image / DICOM / video files or folders, or pretraining "
                    "config YAMLs; key=value overrides after an input apply to it (data.panes=whole, "
                    "data.colour_frames=gray, data.preprocess=usjepa, model.img_size=[224,224]...).")
    p.add_argument("inputs", nargs="+", metavar="PATH_OR_CONFIG", help="files, folders or config YAMLs, each "
                   "optionally followed by key=value overrides")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=16, help="items to preview per input (default 16)")
    p = sub.add_parser(
        "prepare", help="decode, find regions and preprocess once, into shards that data.source=prepared reads",
        description="Run decoding, pane / region estimation and data.preprocess once, in parallel, and write the items "
                    "as uint8 frames (longer side data.max_side; 0: twice model.img_size) with region masks into a "
                    "few large shard files plus index.parquet (dataset, patient, labels, source path, frame, pane). "
                    "Resumable (run it again after a kill), idempotent, never overwrites other shards. Train from "
                    "them with the same config and data.source=prepared data.root=DIR.")
    p.add_argument("config", help="pretraining config YAML whose data section describes the source data")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.max_side=320")
    p.add_argument("--out", required=True, help="shard folder (new, or one this command started)")
    p.add_argument("--workers", type=int, default=0, help="worker processes (default: one per usable CPU)")
    p.add_argument("--shard-rows", type=int, default=8192, help="source rows (frames) per shard (default 8192)")


def _prepare(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from usjepa.config import ConfigError, load_spec
    from usjepa.data.errors import DataError
    from usjepa.data.prepare import prepare

    try:
        cfg = load_spec(args.config, args.overrides)
        with tqdm(desc="shards", unit="shard", disable=None) as bar:
            res = prepare(cfg, args.out, workers=args.workers, shard_rows=args.shard_rows,
                          on_shard=lambda s: bar.update(1))
    except (ConfigError, DataError) as e:
        print(f"usjepa data prepare: {e}", file=sys.stderr)
        return 2
    if res.status == "up to date":
        print(f"{args.out} is up to date: {res.items} items in {res.shards} shards (nothing written)")
    else:
        print(f"prepared {res.items} items in {res.shards} shards into {args.out} ({res.reused} shards kept from an "
              "earlier run); train with data.source=prepared data.root=" + str(args.out))
    if len(res.problems):
        print(f"left out {len(res.problems)} (bad_items.csv):")
        print(res.problems.head(50).to_string(index=False))
        if len(res.problems) > 50:
            print(f"... and {len(res.problems) - 50} more in {args.out}/bad_items.csv")
    else:
        print("left out: none")
    return 0


def run_from_args(args: argparse.Namespace) -> int:
    if getattr(args, "data_tool", None) == "prepare":
        return _prepare(args)
    if getattr(args, "data_tool", None) != "preview":
        print("usage: usjepa data preview PATH_OR_CONFIG... --out DIR [--n N]\n"
              "       usjepa data prepare CONFIG [key=value ...] --out DIR [--workers N]", file=sys.stderr)
        return 2
    from usjepa.config import ConfigError
    from usjepa.data.errors import DataError
    from usjepa.data.preview import preview

    if args.n < 1:
        print(f"usjepa data preview: --n must be >= 1, got {args.n}", file=sys.stderr)
        return 2
    try:
        res = preview(args.inputs, args.out, args.n)
    except (ConfigError, DataError) as e:
        print(f"usjepa data preview: {e}", file=sys.stderr)
        return 2
    n_split = int((res.items["pane"] >= 0).sum()) if len(res.items) else 0
    print(f"previewed {len(res.items)} items ({n_split} panes of multi-pane frames) into {args.out}: "
          f"<name>_region.png, <name>_input.png, {res.sheet.name}, items.csv, skipped.csv")
    if len(res.skipped):
        print(f"skipped {len(res.skipped)}:")
        print(res.skipped.to_string(index=False))
    else:
        print("skipped: none")
    return 0

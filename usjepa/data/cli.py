"""`usjepa data <tool>`: data tools. `preview` shows what the model will receive from files, folders or a config."""

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


def run_from_args(args: argparse.Namespace) -> int:
    if getattr(args, "data_tool", None) != "preview":
        print("usage: usjepa data preview PATH_OR_CONFIG... --out DIR [--n N]", file=sys.stderr)
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

"""`usjepa teacher {inspect,verify,cache}`: the teacher zoo's command-line verbs (wired by usjepa.cli)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from teachers import cache as cache_cli
from teachers.inspection import detect_file_family, format_report, inspect_checkpoint, verify_teacher
from usjepa.errors import one_line


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """`k=v` pairs with YAML-typed values (`depth=2`, `native_grid=[37,37]`, `drop=[projector.*]`)."""
    import yaml

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"option '{pair}' must look like name=value, e.g. --option num_heads=6")
        k, v = pair.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", default="", help="teacher family (default for inspect: detected from the keys)")
    p.add_argument("--arch", default="", help="architecture (timm model name for --family timm)")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="family or teacher option, repeatable (layer=-2, norm=clip, num_heads=6, which=encoder)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="teacher_command", required=True)
    p = sub.add_parser("inspect", help="detect the family of a checkpoint and report architecture and key problems")
    p.add_argument("checkpoint")
    _common(p)
    p = sub.add_parser("verify", help="load a teacher strictly, run a forward pass and report token statistics")
    p.add_argument("checkpoint", nargs="?", default=None, help="omit for --family random")
    p.add_argument("--img-size", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=4)
    _common(p)
    p = sub.add_parser("cache", help="precompute a teacher's targets for a pretrain config's dataset")
    cache_cli.add_arguments(p)


def run_from_args(args: argparse.Namespace) -> int:
    if args.teacher_command == "cache":
        return cache_cli.run_from_args(args)
    try:
        options = parse_options(args.option)
        if args.arch:
            options["arch"] = args.arch
        if args.teacher_command == "inspect":
            info = inspect_checkpoint(args.checkpoint, args.family, **options)
            ok = info.get("loads", False)
        else:
            family = args.family
            if not family:
                if args.checkpoint is None:
                    raise ValueError("verify needs --family (or a checkpoint to detect it from)")
                family = detect_file_family(args.checkpoint)[0]
            info = verify_teacher(family, args.checkpoint, tuple(args.img_size or ()), args.batch, **options)
            ok = info["finite"]
    except ValueError as e:  # a family, option or size the user named wrongly (CheckpointError, missing files and
        # other expected failures reach the `usjepa` entry point, which prints them as one `error:` line too)
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2) if args.json else format_report(info))
    return 0 if ok else 1

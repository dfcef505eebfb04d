"""`usjepa <verb>`: thin argument parsing; each verb loads a config and calls one library function."""

from __future__ import annotations

import argparse
import logging
import os
import sys

VERBS_HELP = """verbs:
  pretrain   train a student (salt), a pixel-MAE teacher (mae) or an I-JEPA baseline (ema_jepa) from a YAML config
  simulate   write a labelled, simulated B-mode ultrasound dataset (PNG + manifest.csv)
  teacher    teacher tools: inspect / verify a checkpoint, `cache` precomputes a frozen teacher's targets
  probe      linear / attentive / kNN probes of encoders on labelled datasets -> one results table
  submit     send a pretraining (or probe) config to SLURM via submitit, or run it locally
  sweep      expand a grid of overrides and submit it as one SLURM job array
  status     a table of every job in a run or sweep folder
  cancel     cancel the jobs of a run or sweep folder (scancel; local runs: a signal to the recorded process)
  resubmit   submit again the runs of a folder that failed, were cancelled or timed out
  export     write a checkpoint's encoder as timm-compatible safetensors
  demo       the whole method end to end on simulated data: teacher -> student -> probes -> table
  config     print the resolved config (or the configuration reference) without running anything
  masks      draw masks exactly as training would and print the effective masking (tokens, masked share)
  data       data tools: `preview` writes each item's region and model input and a contact sheet; `prepare`
             preprocesses once into shards (data.source=prepared)

Run `usjepa <verb> --help` for the arguments of a verb. Options and key=value overrides mix in any order.
Errors print one `error: ...` line (exit status 2); -v or USJEPA_DEBUG=1 adds the traceback."""


class IntermixedParser(argparse.ArgumentParser):
    """Options and positionals (config, key=value overrides) in any order: `submit CFG --launch F launch.nodes=2`.

    argparse's intermixed parsing cannot handle sub-commands, so a parser that has them parses as usual and
    each verb's own parser (which has none) intermixes.
    """

    _intermixing = False

    def _can_intermix(self) -> bool:
        return not any(a.nargs in (argparse.PARSER, argparse.REMAINDER) for a in self._actions)

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing or not self._can_intermix():
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _settle_positionals(args: argparse.Namespace) -> None:
    """`key=value` overrides may also come before the config file: the file is the first positional that is not
    an override (has no '=', or names an existing file), whatever the order it was typed in."""
    for name in ("config", "sweep"):
        first = getattr(args, name, None)
        rest = getattr(args, "overrides", None)
        if not isinstance(first, str) or not isinstance(rest, list) or "=" not in first or os.path.exists(first):
            continue
        items = [first, *rest]
        pick = next((i for i, a in enumerate(items) if "=" not in a or os.path.exists(a)), None)
        if pick is not None:
            setattr(args, name, items.pop(pick))
            args.overrides = items


def _add_verbose_everywhere(parser: argparse.ArgumentParser) -> None:
    """`-v` also after the verb (`usjepa pretrain CFG -v`), on every sub-command parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if "-v" not in sub._option_string_actions:
                    sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                     help="debug logging, and the traceback of an error")
                _add_verbose_everywhere(sub)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-3 data.batch_size=32")


def _pretrain(args) -> int:
    from usjepa.config import load_spec
    from usjepa.train import run_training

    res = run_training(load_spec(args.config, args.overrides))
    print(f"{res.status} at step {res.step}: {res.run_dir}")
    return 0


def _config(args) -> int:
    from omegaconf import OmegaConf

    from usjepa.config import load_config, reference_markdown, schema_fields

    if args.reference and args.markdown:
        print(reference_markdown(), end="")
        return 0
    if args.reference:
        for key, typ, default in schema_fields():
            print(f"{key:40s} {typ:8s} {default!r}")
        return 0
    if not args.config:
        print("error: usjepa config needs a CONFIG file (e.g. configs/pretrain/salt_vit_tiny_sim.yaml), or --reference",
              file=sys.stderr)
        return 2
    print(OmegaConf.to_yaml(load_config(args.config, args.overrides), resolve=True), end="")
    return 0


def _export(args) -> int:
    from usjepa.io.checkpoints import export_encoder, load_encoder_checkpoint

    enc = load_encoder_checkpoint(args.checkpoint, which=args.which)
    path = export_encoder(enc, args.out)
    name, timm_kw = enc.timm_spec()  # timm's ViT (sin-cos) or Eva (RoPE)
    kw = ", ".join(f"{k}={v!r}" for k, v in timm_kw.items())
    print(f"wrote {path}\nload it with: timm.create_model('{name}', {kw}, checkpoint_path='{path}')")
    return 0


def _optional(module: str, attr: str):
    """Verbs whose implementation lives in another part of the package (imported lazily: fast --help)."""
    import importlib

    return getattr(importlib.import_module(module), attr)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `usjepa` parser. With `only` (the verb on the command line), the other verbs' modules are not imported:
    `usjepa config` stays light (no torch); every verb is still listed by --help."""
    parser = IntermixedParser(
        prog="usjepa",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Ultrasound foundation models with a frozen teacher (SALT / US-JEPA).",
        epilog=VERBS_HELP,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the traceback of an error")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    p = sub.add_parser(
        "pretrain",
        help="train from a config (objective.name=salt|mae|ema_jepa)",
        description="Train a model from a YAML config plus dotted overrides. Resumes automatically "
        "from <train.out_dir>/latest.pt.",
    )
    _add_config_args(p)
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("config", help="print the resolved config or the configuration reference")
    p.add_argument("config", nargs="?", default=None)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--reference", action="store_true", help="list every config key with its type and default")
    p.add_argument("--markdown", action="store_true", help="with --reference: a markdown table (as in the README)")
    p.set_defaults(func=_config)

    p = sub.add_parser("export", help="export a checkpoint's encoder (timm key names, safetensors)")
    p.add_argument("checkpoint", help="latest.pt / best.pt / step_N.pt of a usjepa run")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument(
        "--which",
        default="model",
        choices=("model", "target_encoder"),
        help="network inside the checkpoint (target_encoder: the EMA encoder of ema_jepa)",
    )
    p.set_defaults(func=_export)

    lazy = [
        (
            "simulate",
            "usjepa.data.sim.simulate",
            "add_arguments",
            "run_from_args",
            "write a simulated, labelled B-mode dataset",
        ),
        (
            "probe",
            "usjepa.eval.suite",
            "add_arguments",
            "run_from_args",
            "probe encoders on labelled datasets -> results table",
        ),
        ("submit", "launch.cli", "add_submit_arguments", "run_submit", "submit a config to SLURM (or run locally)"),
        ("sweep", "launch.cli", "add_sweep_arguments", "run_sweep", "submit a grid of overrides as one job array"),
        ("status", "launch.cli", "add_status_arguments", "run_status", "table of the jobs in a run or sweep folder"),
        ("cancel", "launch.cli", "add_cancel_arguments", "run_cancel", "cancel the jobs of a run or sweep folder"),
        ("resubmit", "launch.cli", "add_resubmit_arguments", "run_resubmit",
         "submit again the runs of a folder that failed, were cancelled or timed out"),
        ("demo", "usjepa.demo", "add_arguments", "run_from_args", "the whole method end to end on simulated data"),
        ("masks", "usjepa.train.mask_preview", "add_arguments", "run_from_args",
         "draw masks as training would: context / target tokens and masked share per mask pair"),
        ("data", "usjepa.data.cli", "add_arguments", "run_from_args",
         "data tools: preview what the model receives, prepare shards"),
    ]
    for verb, module, add, run, help_ in lazy:
        p = sub.add_parser(verb, help=help_, description=help_)
        if only is not None and verb != only:
            continue
        try:
            _optional(module, add)(p)
            p.set_defaults(func=_optional(module, run))
        except (ImportError, AttributeError) as e:
            p.set_defaults(func=lambda args, e=e, verb=verb: _unavailable(verb, e))

    p = sub.add_parser("teacher", help="teacher tools: inspect, verify, cache",
                       description="Tools for frozen teachers: inspect a checkpoint's keys and family, verify that it "
                                   "loads strictly and runs, or precompute its targets for a dataset (cache).")
    if only is None or only == "teacher":
        try:
            _optional("teachers.cli", "add_arguments")(p)
            p.set_defaults(func=_optional("teachers.cli", "run_from_args"))
        except (ImportError, AttributeError) as e:
            p.set_defaults(func=lambda args, e=e: _unavailable("teacher", e))
    _add_verbose_everywhere(parser)
    return parser


def _unavailable(verb: str, err: Exception) -> int:
    print(f"error: usjepa {verb} is unavailable in this installation: {err}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run one verb. Expected failures print one `error: ...` line and exit 2 (-v or USJEPA_DEBUG=1: traceback)."""
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(only=next((a for a in words if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    _settle_positionals(args)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from usjepa.errors import run_reporting

    return run_reporting(lambda: args.func(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())

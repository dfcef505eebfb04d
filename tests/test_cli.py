"""`usjepa` argument parsing: options and key=value overrides mix in any order, on every verb; -v anywhere."""

from __future__ import annotations

import argparse

import pytest

from usjepa.cli import _settle_positionals, build_parser

C = "configs/pretrain/salt_vit_tiny_sim.yaml"
# (the same command with its options and overrides in two orders)
CASES = {
    "pretrain": (["pretrain", C, "optim.lr=1e-3", "train.steps=5"], ["pretrain", "optim.lr=1e-3", C, "train.steps=5"]),
    "config": (["config", C, "a.b=1", "--reference"], ["config", "--reference", C, "a.b=1"]),
    "submit": (["submit", C, "--launch", "f.yaml", "launch.nodes=2", "--dry-run", "--cluster", "slurm"],
               ["submit", "--cluster", "slurm", C, "--dry-run", "--launch", "f.yaml", "launch.nodes=2"]),
    "sweep": (["sweep", "s.yaml", "x.y=1", "--dry-run", "--failed-only"],
              ["sweep", "--failed-only", "s.yaml", "--dry-run", "x.y=1"]),
    "probe": (["probe", "p.yaml", "out_dir=o", "--print-config"], ["probe", "--print-config", "p.yaml", "out_dir=o"]),
    "teacher cache": (["teacher", "cache", C, "teacher.layer=-2", "--out", "o", "--dtype", "float32"],
                      ["teacher", "cache", "--dtype", "float32", C, "--out", "o", "teacher.layer=-2"]),
    "teacher verify": (["teacher", "verify", "ck.pt", "--family", "native", "--option", "layer=-2"],
                       ["teacher", "verify", "--option", "layer=-2", "--family", "native", "ck.pt"]),
    "status": (["status", "runs/x", "--no-slurm", "--csv", "t.csv"],
               ["status", "--csv", "t.csv", "runs/x", "--no-slurm"]),
    "cancel": (["cancel", "runs/x", "--dry-run"], ["cancel", "--dry-run", "runs/x"]),
    "resubmit": (["resubmit", "runs/x", "--cluster", "local", "--wait"], ["resubmit", "--wait", "--cluster", "local",
                                                                          "runs/x"]),
    "simulate": (["simulate", "--out", "d", "--n", "8"], ["simulate", "--n", "8", "--out", "d"]),
    "demo": (["demo", "--out", "d", "--compare"], ["demo", "--compare", "--out", "d"]),
}


def _plain(ns: argparse.Namespace) -> dict:
    _settle_positionals(ns)  # (main does this after parsing)
    return {k: v for k, v in vars(ns).items() if k != "func"}


@pytest.mark.parametrize("verb", sorted(CASES))
def test_options_and_overrides_mix_in_any_order(verb: str) -> None:
    parser = build_parser()
    a, b = (parser.parse_args(argv) for argv in CASES[verb])
    assert _plain(a) == _plain(b)
    assert a.verbose is False


def test_the_readme_example_that_used_to_fail() -> None:
    args = build_parser().parse_args(["submit", "configs/pretrain/usjepa_vitb16.yaml", "--launch", "my_cluster.yaml",
                                      "launch.nodes=2"])
    assert (args.config, args.launch_file, args.overrides) == ("configs/pretrain/usjepa_vitb16.yaml",
                                                               "my_cluster.yaml", ["launch.nodes=2"])


@pytest.mark.parametrize("argv", [["-v", "status", "d"], ["status", "-v", "d"], ["status", "d", "--verbose"],
                                  ["teacher", "inspect", "ck.pt", "-v"]])
def test_verbose_anywhere(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).verbose is True


def test_unknown_options_are_still_refused(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["submit", C, "--nodes", "2"])
    assert e.value.code == 2 and "unrecognized arguments: --nodes" in capsys.readouterr().err

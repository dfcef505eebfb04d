"""Sweep files: grid expansion, member naming, checks, and re-runs that skip completed members."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.sweep import expand_grid, format_value, load_sweep, member_configs, member_name, plan_sweep
from usjepa.cli import main
from usjepa.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "configs" / "pretrain" / "salt_vit_tiny_sim.yaml"


def _write(tmp_path: Path, body: str, name: str = "sw.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"base: {BASE}\nout_dir: {tmp_path / 'out'}\n" + body)
    return path


def test_grid_is_the_cartesian_product_in_file_order() -> None:
    sets = expand_grid({"optim.lr": [0.001, 0.0003], "mask.preset": ["usjepa", "ijepa"], "train.compile": [False]})
    assert sets == [
        ["optim.lr=0.001", "mask.preset=usjepa", "train.compile=false"],
        ["optim.lr=0.001", "mask.preset=ijepa", "train.compile=false"],
        ["optim.lr=0.0003", "mask.preset=usjepa", "train.compile=false"],
        ["optim.lr=0.0003", "mask.preset=ijepa", "train.compile=false"],
    ]


def test_values_keep_their_dotlist_syntax() -> None:
    assert format_value([64, 32]) == "[64,32]"
    assert format_value(None) == "null" and format_value(True) == "true"


def test_member_names_come_from_overrides_and_are_path_safe() -> None:
    assert member_name(["optim.lr=0.001", "mask.preset=ijepa"]) == "optim.lr=0.001,mask.preset=ijepa"
    assert "/" not in member_name(["teacher.checkpoint=/a/b/c.pt"])
    assert member_name([]) == "base"
    long = member_name([f"data.root=/{'x' * 300}"])
    assert len(long) <= 120
    assert long != member_name([f"data.root=/{'x' * 299}y"])  # a hash keeps long names distinct


def test_example_sweep_is_a_two_by_two_grid_of_valid_configs() -> None:
    spec = load_sweep(ROOT / "configs" / "sweep" / "tiny_lr_x_mask.yaml")
    assert len(spec.members) == 4
    cfgs = member_configs(spec)
    folders = {Path(c.train.out_dir) for c in cfgs}
    assert len(folders) == 4 and all(f.parent == spec.out_dir for f in folders)
    assert {(c.optim.lr, c.mask.preset) for c in cfgs} == {(1e-3, "usjepa"), (1e-3, "ijepa"), (3e-4, "usjepa"),
                                                           (3e-4, "ijepa")}
    assert {c.train.steps for c in cfgs} == {20}  # sweep-wide overrides reach every member


def test_explicit_runs_accept_lists_and_mappings(tmp_path) -> None:
    spec = load_sweep(_write(tmp_path, "runs:\n  - [optim.lr=0.01]\n  - {optim.lr: 0.02, train.steps: 5}\n"))
    assert [m.overrides for m in spec.members] == [["optim.lr=0.01"], ["optim.lr=0.02", "train.steps=5"]]
    cfgs = member_configs(spec)
    assert cfgs[1].train.steps == 5 and cfgs[0].train.steps != 5


@pytest.mark.parametrize("body, message", [
    ("grdi:\n  optim.lr: [1]\n", "did you mean 'grid'"),
    ("overrides: []\n", "exactly one of"),
    ("grid:\n  optim.lr: 0.1\n", "non-empty list"),
    ("runs:\n  - [optim.lr=1]\n  - [optim.lr=1]\n", "two members named"),
    ("grid:\n  launch.nodes: [1, 2]\n", "launch"),
])
def test_bad_sweep_files_say_what_is_wrong(tmp_path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_sweep(_write(tmp_path, body))


def test_member_with_unknown_key_is_named_before_anything_is_submitted(tmp_path) -> None:
    spec = load_sweep(_write(tmp_path, "grid:\n  optim.lrr: [1, 2]\n"))
    with pytest.raises(ConfigError, match="member 'optim.lrr=1'.*optim.lr"):
        member_configs(spec)


def test_rerun_skips_completed_members_and_resubmits_the_rest(tmp_path) -> None:
    spec = load_sweep(_write(tmp_path, "overrides: [train.steps=9]\ngrid:\n  optim.lr: [0.1, 0.2, 0.3]\n"))
    cfgs = member_configs(spec)
    done, preempted = Path(cfgs[0].train.out_dir), Path(cfgs[1].train.out_dir)
    for d, state, step in ((done, "completed", 9), (preempted, "preempted", 7)):
        d.mkdir(parents=True)
        (d / "status.json").write_text(json.dumps({"state": state, "step": step, "total_steps": 9}))
    plan = plan_sweep(spec, cfgs)
    assert [(m.name, why) for m, why in plan.skipped] == [("optim.lr=0.1", "completed at step 9/9")]
    assert [m.name for m, _ in plan.to_submit] == ["optim.lr=0.2", "optim.lr=0.3"]
    # only those that ran and ended early: the never-submitted third member waits
    plan = plan_sweep(spec, cfgs, failed_only=True)
    assert [m.name for m, _ in plan.to_submit] == ["optim.lr=0.2"]
    # more steps than the completed run reached: it is an extension, not a finished run
    longer = member_configs(spec, ["train.steps=12"])
    assert [m.name for m, _ in plan_sweep(spec, longer).to_submit] == ["optim.lr=0.1", "optim.lr=0.2", "optim.lr=0.3"]


def test_dry_run_prints_one_array_for_the_unfinished_members(tmp_path, capsys) -> None:
    path = _write(tmp_path, "overrides: [launch.array_parallelism=2, train.steps=9]\ngrid:\n  optim.lr: [0.1, 0.2]\n"
                            "  mask.preset: [usjepa, ijepa]\n")
    done = tmp_path / "out" / "optim.lr=0.1,mask.preset=usjepa"
    done.mkdir(parents=True)
    (done / "status.json").write_text(json.dumps({"state": "completed", "step": 9, "total_steps": 9}))
    assert main(["sweep", str(path), "--cluster", "slurm", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "skip optim.lr=0.1,mask.preset=usjepa: completed" in out
    assert "#SBATCH --array=0-2%2" in out
    assert out.count("# member run folder:") == 3

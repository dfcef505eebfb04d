"""Executors from the `launch:` section: the sbatch script of a dry run, presets, placeholders, local / debug."""

from __future__ import annotations

from pathlib import Path

import pytest
import submitit

from launch.executor import make_executor, render_sbatch, slurm_parameters
from launch.submit import launch_overrides, resolve_run_config, submit_run
from usjepa.cli import main
from usjepa.config import ConfigError

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "pretrain" / "salt_vit_tiny_sim.yaml"
LAUNCH_EXAMPLES = Path(__file__).resolve().parent.parent / "configs" / "launch"

TWO_NODES_EIGHT_GPUS = [
    "launch.nodes=2", "launch.gpus_per_node=4", "launch.tasks_per_node=4", "launch.cpus_per_task=8",
    "launch.mem_gb=128", "launch.time=240", "launch.partition=part-a", "launch.account=acct-b",
    "launch.qos=q-c", "launch.constraint=feat-d", "launch.exclude=node-e", "launch.signal_delay_s=180",
    'launch.slurm_additional_parameters={"mail-type": "END", "requeue": true}',
    'launch.setup=["echo setup-line"]',
]


def _sbatch_lines(text: str) -> set[str]:
    return {ln.strip() for ln in text.splitlines() if ln.startswith("#SBATCH")}


def test_dry_run_of_two_nodes_eight_gpus_prints_the_expected_sbatch_lines(tmp_path, capsys) -> None:
    run_dir = tmp_path / "big_run"
    code = main(["submit", str(CONFIG), *TWO_NODES_EIGHT_GPUS, f"train.out_dir={run_dir}",
                 "--cluster", "slurm", "--dry-run"])
    assert code == 0
    out = capsys.readouterr().out
    lines = _sbatch_lines(out)
    expected = {
        "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=8", "#SBATCH --mem=128GB", "#SBATCH --time=240",
        "#SBATCH --partition=part-a", "#SBATCH --account=acct-b", "#SBATCH --qos=q-c",
        "#SBATCH --constraint=feat-d", "#SBATCH --exclude=node-e", "#SBATCH --signal=USR2@180",
        "#SBATCH --mail-type=END", "#SBATCH --requeue", "#SBATCH --job-name=usjepa-big_run",
    }
    assert expected <= lines, sorted(expected - lines)
    assert not any(ln.startswith("#SBATCH --array") for ln in lines)
    assert f"--output={run_dir}/submitit/%j_0_log.out" in out
    assert "echo setup-line" in out and "srun" in out and "submitit.core._submit" in out
    assert f"run folder: {run_dir}" in out
    assert not run_dir.exists(), "a dry run must not create the run folder"


def test_defaults_leave_out_what_the_config_leaves_empty(tmp_path) -> None:
    cfg = resolve_run_config(CONFIG, [f"train.out_dir={tmp_path / 'r'}"])
    lines = _sbatch_lines(render_sbatch(cfg.launch, tmp_path / "r" / "submitit", "j"))
    keys = {ln.split("=")[0] for ln in lines}
    for absent in ("--partition", "--account", "--qos", "--gpus-per-node", "--mem", "--constraint", "--exclude"):
        assert f"#SBATCH {absent}" not in keys
    assert "#SBATCH --nodes=1" in lines and "#SBATCH --ntasks-per-node=1" in lines


def test_array_rendering_uses_array_parallelism(tmp_path) -> None:
    cfg = resolve_run_config(CONFIG, [f"train.out_dir={tmp_path}", "launch.array_parallelism=3"])
    script = render_sbatch(cfg.launch, tmp_path / "submitit", "sweep", array_size=8)
    assert "#SBATCH --array=0-7%3" in script
    assert "%A_%a_0_log.out" in script


def test_placeholders_in_the_slurm_example_are_refused(tmp_path) -> None:
    example = LAUNCH_EXAMPLES / "slurm_example.yaml"
    cfg = resolve_run_config(CONFIG, [f"train.out_dir={tmp_path}"], launch_file=example)
    with pytest.raises(ConfigError, match="placeholder"):
        submit_run(cfg, cluster="slurm", dry_run=True)
    filled = resolve_run_config(CONFIG, [f"train.out_dir={tmp_path}", "launch.partition=p1", "launch.account=a1"],
                                launch_file=example)
    script = submit_run(filled, cluster="slurm", dry_run=True).script
    assert "#SBATCH --partition=p1" in script and "#SBATCH --account=a1" in script


def test_launch_presets_parse_and_unknown_keys_are_named(tmp_path) -> None:
    for path in sorted(LAUNCH_EXAMPLES.glob("*.yaml")):
        assert all(o.startswith("launch.") for o in launch_overrides(path))
    bad = tmp_path / "bad.yaml"
    bad.write_text("launch:\n  partiton: x\n")
    with pytest.raises(ConfigError, match="launch.partition"):
        resolve_run_config(CONFIG, [f"train.out_dir={tmp_path}"], launch_file=bad)
    not_launch = tmp_path / "nl.yaml"
    not_launch.write_text("train:\n  steps: 3\n")
    with pytest.raises(ConfigError, match="launch:"):
        launch_overrides(not_launch)


@pytest.mark.parametrize("override, message", [
    ("launch.nodes=0", "launch.nodes=0"),
    ("launch.time=0", "launch.time=0"),
    ("launch.array_parallelism=0", "launch.array_parallelism"),
])
def test_bad_ranges_are_config_errors(tmp_path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):  # refused when the config loads, before any sbatch script
        cfg = resolve_run_config(CONFIG, [f"train.out_dir={tmp_path}", override])
        render_sbatch(cfg.launch, tmp_path, "j")


def test_local_executor_is_picked_explicitly(tmp_path) -> None:
    cfg = resolve_run_config(CONFIG, [f"train.out_dir={tmp_path}", "launch.tasks_per_node=2", "launch.time=7"])
    local = make_executor(cfg.launch, tmp_path / "submitit", "local", "j")
    assert isinstance(local, submitit.LocalExecutor)
    assert local.parameters["tasks_per_node"] == 2 and local.parameters["timeout_min"] == 7
    with pytest.raises(ValueError, match="debug runs in this process"):
        make_executor(cfg.launch, tmp_path / "s2", "debug", "j")
    multi = resolve_run_config(CONFIG, [f"train.out_dir={tmp_path}", "launch.nodes=2"])
    with pytest.raises(ConfigError, match="launch.nodes=2 needs SLURM"):
        make_executor(multi.launch, tmp_path / "s3", "local", "j")
    with pytest.raises(ConfigError, match="not one of"):
        make_executor(cfg.launch, tmp_path / "s4", "kubernetes", "j")


def test_slurm_parameters_are_submitit_keywords(tmp_path) -> None:
    cfg = resolve_run_config(CONFIG, [f"train.out_dir={tmp_path}", *TWO_NODES_EIGHT_GPUS])
    params = slurm_parameters(cfg.launch, "name")
    # every key must be one SlurmExecutor.update_parameters accepts
    from submitit.slurm.slurm import _get_default_parameters

    assert set(params) <= set(_get_default_parameters())
    assert params["additional_parameters"] == {"mail-type": "END", "requeue": True}

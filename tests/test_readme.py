"""The README's promises that can drift: its two opening commands and the generated configuration reference."""

import re
from pathlib import Path

from usjepa.config import reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo: setup\n\t\$\(BIN\)/usjepa demo", makefile, flags=re.M)
    assert "torch==2.14.1 torchvision==0.29.1" in makefile


def test_configuration_reference_matches_the_schemas():
    text = (ROOT / "README.md").read_text()
    section = text.split("<!-- config-reference:start -->\n", 1)[1].split("<!-- config-reference:end -->", 1)[0]
    assert section == reference_markdown(), "run: python -m usjepa.config_reference to refresh README.md"


def test_readme_slurm_commands_run_as_written(tmp_path, monkeypatch, capsys):
    """The SLURM block's commands, verbatim (plus --dry-run where they would submit or cancel, and without
    `--watch`, which refreshes until Ctrl-C), from a folder that holds `configs/` and the user's preset."""
    import json
    import shlex

    from launch.sweep import load_sweep, member_configs
    from usjepa.cli import main
    from usjepa.config import save_run_config

    text = (ROOT / "README.md").read_text()
    section = text.split("### SLURM: submit, sweep, status, cancel, resubmit\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    commands = [shlex.split(line.split("#")[0]) for line in block.strip().splitlines()]
    assert [c[:2] for c in commands] == [["usjepa", v] for v in ("submit", "submit", "sweep", "status", "cancel",
                                                                  "resubmit")]
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    preset = (ROOT / "configs" / "launch" / "slurm_example.yaml").read_text()
    (tmp_path / "my_cluster.yaml").write_text(preset.replace("<your-partition>", "gpu").replace("<your-account>",
                                                                                                "lab"))
    monkeypatch.chdir(tmp_path)
    # a sweep folder as a finished and a failed member leave it
    spec = load_sweep("configs/sweep/tiny_lr_x_mask.yaml")
    cfgs = member_configs(spec)
    for i, (cfg, state) in enumerate(zip(cfgs[:2], ("completed", "failed"))):
        run = Path(cfg.train.out_dir)
        save_run_config(cfg, run)
        (run / "status.json").write_text(json.dumps({"state": state, "step": 20 if state == "completed" else 4,
                                                     "total_steps": 20, "error": "TrainingError: boom"}))
        (run / "launch.json").write_text(json.dumps({"cluster": "slurm", "job_id": f"424242_{i}"}))
    outputs = []
    for argv in commands:
        args = [a for a in argv[1:] if a != "--watch"]
        if args[0] in ("submit", "sweep", "cancel", "resubmit") and "--dry-run" not in args:
            args.append("--dry-run")
        assert main(args) == 0, args
        outputs.append(capsys.readouterr().out)
    assert "#SBATCH" in outputs[0]
    assert "#SBATCH --nodes=2" in outputs[1] and "#SBATCH --partition=gpu" in outputs[1]
    assert "#SBATCH --array=0-2%2" in outputs[2] and "skip optim.lr=0.001,mask.preset=usjepa: completed" in outputs[2]
    assert "completed" in outputs[3] and "failed" in outputs[3] and "TrainingError: boom" in outputs[3]
    assert outputs[4].count("left alone") == 2  # nothing of this sweep is queued or running
    assert "would resubmit (failed)" in outputs[5] and "skip" in outputs[5]

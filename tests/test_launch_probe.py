"""Probe suites go through the same launcher as pretraining (the job callable runs `run_probe`)."""

import json

from launch.submit import is_probe_config, resolve_run_config, run_folder, submit_run
from tests.test_eval_suite import FAST, write_suite


def test_probe_suite_submits_through_the_launcher(tmp_path):
    cfg_path = write_suite(tmp_path, FAST)
    assert is_probe_config(cfg_path) and not is_probe_config("configs/pretrain/salt_vit_tiny_sim.yaml")
    cfg = resolve_run_config(cfg_path, ["protocol.seeds=[0]"])
    assert run_folder(cfg) == tmp_path / "out"
    dry = submit_run(cfg, cluster="slurm", dry_run=True)
    assert dry.run_dirs == [tmp_path / "out"] and "#SBATCH" in dry.script
    sub = submit_run(cfg, cluster="debug")  # runs in this process when its result is asked for
    assert sub.run_dirs == [tmp_path / "out"]
    result = sub.jobs[0].result()
    assert result.status == "completed" and len(result.table)
    assert (tmp_path / "out" / "results.csv").exists() and (tmp_path / "out" / "config.yaml").exists()
    assert json.loads((tmp_path / "out" / "status.json").read_text())["state"] == "completed"

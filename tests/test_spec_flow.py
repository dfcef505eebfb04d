"""Typed specs travel below the entry points: training, probing and submitted jobs read read-only spec objects.

The YAML / CLI layer (OmegaConf) ends at `load_spec` / `spec_of`; these tests check that what the trainer, the
probe suite and a submitted job hold is the spec (sealed: assignment fails), that a spec built in Python trains
like the same config loaded from YAML, and that what a run writes (config.yaml, the checkpoint's config) is the
same plain data either way.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from usjepa.config import PretrainConfig, load_config, load_spec, pretrain_spec, spec_of, to_dict
from usjepa.eval.config import load_probe_config
from usjepa.eval.spec import ProbeRunConfig
from usjepa.spec import plain
from usjepa.train import loop as train_loop
from usjepa.train import run_training
from usjepa.train.checkpoint import load_training_checkpoint

SALT = "configs/pretrain/salt_vit_tiny_sim.yaml"


def _overrides(out, sim_root) -> list[str]:
    return [f"train.out_dir={out}", f"data.root={sim_root}", "data.num_images=48", "data.batch_size=8",
            "train.steps=3", "train.progress=false", "train.log_every=1", "train.ckpt_every=1000"]


def test_a_config_becomes_one_sealed_spec_the_same_from_every_form(tmp_path):
    spec = load_spec(SALT, [f"train.out_dir={tmp_path}"])
    assert isinstance(spec, PretrainConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.train.steps = 5  # read-only below the entry points: a change is a new spec (dataclasses.replace)
    dictcfg = load_config(SALT, [f"train.out_dir={tmp_path}"])
    # a DictConfig, the plain dict a checkpoint or a submitted job stores, and the spec itself: one spec
    for form in (dictcfg, to_dict(dictcfg), spec):
        assert plain(pretrain_spec(form)) == plain(spec)
    assert plain(spec) == to_dict(dictcfg)  # the same plain data as OmegaConf's own conversion
    assert json.dumps(plain(spec))  # plain data only: JSON-able, picklable for submitit
    with pytest.raises(TypeError, match="PretrainConfig"):
        pretrain_spec(["not", "a", "config"])


def test_the_trainer_reads_a_spec_and_a_python_built_spec_trains_like_the_yaml(tmp_path, sim_root, monkeypatch):
    seen = []
    real_init = train_loop._Trainer.__init__

    def spy(self, cfg, env, should_stop):
        seen.append(cfg)
        real_init(self, cfg, env, should_stop)

    monkeypatch.setattr(train_loop._Trainer, "__init__", spy)
    a = run_training(load_config(SALT, _overrides(tmp_path / "a", sim_root)))  # a DictConfig: converted at entry
    base = load_spec(SALT, _overrides(tmp_path / "a", sim_root))
    built = dataclasses.replace(base, train=dataclasses.replace(base.train, out_dir=str(tmp_path / "b")))
    b = run_training(built)
    assert a.status == b.status == "completed"
    assert [type(c) for c in seen] == [PretrainConfig, PretrainConfig] and seen[1] is built
    ca = load_training_checkpoint(tmp_path / "a" / "latest.pt")
    cb = load_training_checkpoint(tmp_path / "b" / "latest.pt")
    assert ca["config"] == {**cb["config"], "train": {**cb["config"]["train"], "out_dir": str(tmp_path / "a")}}
    for k in ca["model"]:  # the student's weights: the same run
        torch.testing.assert_close(ca["model"][k], cb["model"][k], rtol=0, atol=0)
    assert (tmp_path / "b" / "config.yaml").read_text().replace(str(tmp_path / "b"), str(tmp_path / "a")) == \
        (tmp_path / "a" / "config.yaml").read_text()


def test_probe_specs_and_submitted_jobs_hold_specs(tmp_path):
    from launch.job import TrainJob
    from usjepa.eval.suite import SuiteRunner

    probe_yaml = tmp_path / "p.yaml"
    probe_yaml.write_text(f"""
out_dir: {tmp_path / "out"}
encoders:
  r: {{kind: timm, timm_model: vit_tiny_patch16_224}}
datasets:
  sim:
    data: {{source: simulate, root: {tmp_path / "sim"}, num_images: 8, task: lesion}}
""")
    cfg = load_probe_config(probe_yaml)
    runner = SuiteRunner(cfg)
    assert isinstance(runner.cfg, ProbeRunConfig)
    assert runner.handles["sim"].data.augment is False  # the handle's own copy, the spec is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        runner.cfg.protocol.seeds = [1]
    assert plain(spec_of(plain(runner.cfg), ProbeRunConfig)) == plain(runner.cfg)

    job = TrainJob(to_dict(load_config(SALT, [f"train.out_dir={tmp_path / 'run'}"])))
    assert isinstance(job.typed_config(), PretrainConfig)

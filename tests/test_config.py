import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from usjepa.config import ConfigError, load_config, save_run_config, schema_fields

TINY = "configs/pretrain/salt_vit_tiny_sim.yaml"


def test_yaml_base_and_overrides_merge():
    cfg = load_config(TINY, ["optim.lr=2e-3", "data.batch_size=16"])
    assert cfg.model.patch_size == 8 and cfg.optim.lr == 2e-3 and cfg.data.batch_size == 16
    assert cfg.objective.name == "salt"


@pytest.mark.parametrize(
    "override,hint", [("optim.lrr=1", "optim.lr"), ("train.stepz=3", "train.steps"), ("modle.arch=vit_base", "model")]
)
def test_unknown_override_names_closest_key(override, hint):
    with pytest.raises(ConfigError, match=f"did you mean '{hint}"):
        load_config(TINY, [override])


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  warmpu: 3\n")
    with pytest.raises(ConfigError, match=r"optim.warmpu.*bad.yaml.*optim.warmup"):
        load_config(p)


def test_bad_values_are_explained():
    with pytest.raises(ConfigError, match="not one of"):
        load_config(TINY, ["objective.name=byol"])
    with pytest.raises(ConfigError, match="multiple of model.patch_size"):
        load_config(TINY, ["model.img_size=[60,64]"])
    with pytest.raises(ConfigError, match="could not be converted"):
        load_config(TINY, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="needs a frozen teacher"):
        load_config(TINY, ['teacher.family=""'])


def test_free_form_options_accept_new_keys():
    cfg = load_config(TINY, ["teacher.options.depth=3", "launch.slurm_additional_parameters.reservation=x"])
    assert cfg.teacher.options.depth == 3


def test_run_folder_records_config_git_and_versions(tmp_path):
    cfg = load_config(TINY)
    save_run_config(cfg, tmp_path)
    assert (tmp_path / "config.yaml").read_text().count("objective:") == 1
    meta = json.loads((tmp_path / "env.json").read_text())
    assert meta["versions"]["torch"] and "commit" in meta["git"]
    again = load_config(tmp_path / "config.yaml")  # the resolved config reloads as a config
    assert again == cfg


def test_reference_lists_every_section():
    keys = [k for k, _, _ in schema_fields()]
    for k in (
        "model.arch",
        "mask.region.tau",
        "objective.loss",
        "teacher.family",
        "data.batch_size",
        "launch.partition",
    ):
        assert k in keys


# ----------------------------------------------------------------------------- every choice and range, at load time

# (override, the key the one-line error must name; "" = the override's own key)
BAD_PRETRAIN = [
    # the ten of issue 15
    ("data.preprocess=fann", ""), ("data.source=simulte", ""), ("data.region=autoo", ""),
    ("data.balance=organs", ""), ("teacher.norm=imagnet", ""), ("optim.lr=-1", ""), ("data.batch_size=0", ""),
    ("mask.target_scale=[0.2,1.5]", ""), ("model.patch_size=7", ""), ("objective.loss=l3", ""),
    # model / predictor
    ("model.arch=vit_tiniest", ""), ("model.attn_backend=flash", ""), ("model.pos_embed=rotary", ""),
    ("model.init=xavier", ""), ("model.in_chans=2", ""), ("model.drop_path=1.5", ""), ("model.norm_std=[0]", ""),
    ("model.embed_dim=100", ""), ("model.depth=-1", ""), ("predictor.num_heads=0", ""),
    ("predictor.embed_dim=99", ""),
    # mask
    ("mask.preset=ijepa2", ""), ("mask.sampler=batch", ""), ("mask.context_scale=[0.9,0.8]", ""),
    ("mask.target_aspect=[0,1]", ""), ("mask.num_targets=0", ""), ("mask.random_ratio=1", ""),
    ("mask.region.tau=0", ""), ("mask.region.min_fraction=1", ""), ("mask.region.max_tries=0", ""),
    # objective
    ("objective.name=byol", ""), ("objective.target_norm=batchnorm", ""), ("objective.smooth_l1_beta=0", ""),
    ("objective.ema.momentum_start=1.1", ""), ("objective.mae.decoder_depth=0", ""),
    # teacher
    ("teacher.family=dinov3", ""), ("teacher.precision=fp16", ""), ("teacher.mean_last_k=0", ""),
    ("teacher.patch_size=-1", ""), ("teacher.options.grid_resample=nearest", ""),
    # data
    ("data.augment_policy=randaug", ""), ("data.resize=crop", ""), ("data.panes=both", ""),
    ("data.colour_frames=drop", ""), ("data.sim_probe=convex", ""), ("data.sim_organ=heart", ""),
    ("data.channels=2", ""), ("data.num_workers=-1", ""), ("data.crop_scale=[0.5,1.2]", ""),
    ("data.crop_ratio=[2,1]", ""), ("data.hflip=2", ""), ("data.bad_item_threshold=-0.1", ""),
    ("data.split_fractions=[0.5,0.5]", ""), ("data.balance_weights.liver=-1", "data.balance_weights"),
    ("data.patient_regex=(", ""), ("data.sim_lesion_size=[0.3,0.1]", ""), ("data.frame_stride=0", ""),
    ("data.max_side=-1", ""), ("data.num_images=0", ""),
    # optim / train / launch
    ("optim.betas=[0.9,1.0]", ""), ("optim.weight_decay=-0.1", ""), ("optim.accum_steps=0", ""),
    ("optim.eps=0", ""), ("optim.clip_grad=-1", ""), ("optim.warmup=-1", ""), ("train.precision=fp16", ""),
    ("train.resume=maybe", ""), ("train.val_fraction=0.6", ""), ("train.log_every=-1", ""),
    ("train.val_batches=0", ""), ("train.keep_last=-1", ""), ("launch.cluster=k8s", ""), ("launch.nodes=0", ""),
    ("launch.mem_gb=-1", ""), ("launch.array_parallelism=0", ""),
]


@pytest.mark.parametrize("override,key", BAD_PRETRAIN, ids=[o for o, _ in BAD_PRETRAIN])
def test_usjepa_config_refuses_bad_value_naming_the_key(override, key, capsys):
    from usjepa.cli import main

    assert main(["config", TINY, override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert (key or override.split("=", 1)[0]) in err[0], err[0]


def test_choice_errors_suggest_the_closest_name():
    with pytest.raises(ConfigError, match="did you mean 'dinov2'"):
        load_config(TINY, ["teacher.family=dinov3"])
    with pytest.raises(ConfigError, match="did you mean 'sdpa'"):
        load_config(TINY, ["model.attn_backend=spda"])


PROBE = "configs/probe/sim.yaml"
BAD_PROBE = [
    "protocol.decay=l1", "protocol.preset=paper", "protocol.knn_k=[0]", "protocol.epochs=0",
    "protocol.severities=[4]", "protocol.img_size=[224]", "protocol.attentive_lrs=[0]", "protocol.bootstrap=-1",
    "datasets.lesion.label_kind=ordinal", "datasets.lesion.data.preprocess=fann", "datasets.lesion.max_items=-1",
    "datasets.lesion.img_size=[0,0]", "encoders.salt.teacher.norm=imagnet", "device=gpu", "batch_size=0",
    "num_workers=-1", "launch.cluster=k8s",
]


@pytest.mark.parametrize("override", BAD_PROBE)
def test_probe_config_refuses_bad_value_naming_the_key(override):
    from usjepa.eval.config import load_probe_config

    with pytest.raises(ConfigError, match=override.split("=", 1)[0].replace(".", r"\.")):
        load_probe_config(PROBE, [override])


# ----------------------------------------------------------------------------- shipped configs, specs, registries

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads(path):
    """Pretrain and teacher files alone (a base file with a smoke-test teacher), probe files as probe runs, launch
    files on top of the tiny run, sweeps with every member."""
    from launch.submit import launch_overrides
    from launch.sweep import load_sweep, member_configs
    from usjepa.config import validate
    from usjepa.eval.config import load_probe_config

    kind = path.parent.name
    if kind == "probe":
        load_probe_config(path)
    elif kind == "launch":
        validate(load_config(ROOT / TINY, launch_overrides(path)))
    elif kind == "sweep":
        assert len(member_configs(load_sweep(path))) > 1
    else:
        extra = [] if "family" in path.read_text() or "objective" in path.read_text() else ["teacher.family=random"]
        validate(load_config(path, extra))


def test_spec_objects_are_frozen_and_typed():
    from usjepa.config import ModelConfig, PretrainConfig, to_spec

    spec = to_spec(load_config(TINY))
    assert isinstance(spec, PretrainConfig) and isinstance(spec.model, ModelConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.model.patch_size = 4
    with pytest.raises(ConfigError, match="^patch_size=0"):  # built directly, the field is named bare
        ModelConfig(patch_size=0)


def test_registries_match_their_implementations():
    import teachers
    from teachers.catalog import FAMILY_MODULES
    from usjepa.eval.spec import CORRUPTIONS, ENCODER_KINDS
    from usjepa.objectives.spec import LOSSES, OBJECTIVES

    for reg in (OBJECTIVES, LOSSES, ENCODER_KINDS, CORRUPTIONS):
        assert len(reg) and all(callable(reg.get(name)) for name in reg), reg.kind
    assert set(FAMILY_MODULES) == set(teachers.FAMILIES)


# ----------------------------------------------------------------------------- a light config, one-way imports


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_config_imports_no_torch_and_no_teacher_family():
    code = ("import sys, usjepa.config, usjepa.eval.config\n"
            "from teachers.catalog import FAMILY_MODULES\n"
            "heavy = ['torch', 'numpy', 'usjepa.models.vit', 'usjepa.data.build', 'teachers.registry']\n"
            "heavy += [FAMILY_MODULES.entry(n).target for n in FAMILY_MODULES]\n"
            "print([m for m in heavy if m in sys.modules])")
    proc = _fresh(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("first", ["launch.spec", "teachers.spec", "usjepa.eval.spec", "usjepa.eval.config",
                                   "usjepa.masks.spec", "usjepa.objectives.spec", "usjepa.models.spec",
                                   "usjepa.data.spec"])
def test_any_config_module_imports_first(first):
    """No import cycle: each section module works as the first import of a fresh interpreter."""
    proc = _fresh(f"import {first}\nimport usjepa.config\nprint(usjepa.config.load_config('{TINY}').model.arch)")
    assert proc.returncode == 0 and proc.stdout.strip() == "vit_tiny", proc.stderr


def _toy_from_config(cfg, parts):
    return ("toy", type(parts.student).__name__, parts.total_steps)


def test_a_registered_objective_is_accepted_and_built(monkeypatch):
    """Adding an objective is its module plus one registry entry: the config accepts it and the builder calls it."""
    from usjepa.objectives.spec import OBJECTIVES
    from usjepa.registry import Entry
    from usjepa.train.build import build_objective

    with pytest.raises(ConfigError, match="objective.name='toy'"):
        load_config(TINY, ["objective.name=toy"])
    monkeypatch.setitem(OBJECTIVES._entries, "toy", Entry("toy", f"{__name__}:_toy_from_config",
                                                         facts={"needs_teacher": False}))
    cfg = load_config(TINY, ["objective.name=toy", "model.depth=1"])
    assert build_objective(cfg, total_steps=7) == ("toy", "VisionTransformer", 7)

import json

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

import pytest

from usjepa.config import ConfigError
from usjepa.eval.config import load_probe_config

SIM = "configs/probe/sim.yaml"
PAPER = {  # US-JEPA App. B.2, Table 8: train / val / test
    "aul": [529, 59, 147], "busbra": [765, 86, 213], "butterfly": [28053, 6272, 6751], "fatty_liver": [390, 50, 110],
    "gbcu": [1019, 114, 122], "mmotu": [800, 200, 469], "pocus": [1444, 177, 443], "tn5000": [3500, 500, 1000],
}


def test_ultrabench_suite_describes_the_eight_usjepa_tasks():
    cfg = load_probe_config("configs/probe/ultrabench.yaml", ["data_root=/data/ub"])
    assert {k: list(v.expected_sizes) for k, v in cfg.datasets.items()} == PAPER
    for d in cfg.datasets.values():
        assert d.data.source == "ultrabench" and d.splits.train == "train+val" and not d.splits.val
        train, val, _ = d.expected_sizes  # a share of train + val that gives the published count on that size
        assert 0 < d.val_size < 1 and round(d.val_size * (train + val)) == val
    assert {k for k, d in cfg.datasets.items() if d.data.groups == "none"} == {"aul", "gbcu", "mmotu"}  # no ids
    p = cfg.protocol
    assert (p.preset, p.solver, list(p.lrs), list(p.wds), p.decay, list(p.pooling), p.epochs, p.patience,
            p.batch_size, list(p.seeds)) == ("usjepa", "adamw", [1e-3], [1e-4], "decoupled", ["mean"], 150, 15, 32,
                                             [0, 1, 2, 3, 4])


def test_datasets_can_be_dropped_and_selected_from_the_command_line():
    ub = "configs/probe/ultrabench.yaml"
    cfg = load_probe_config(ub, ["datasets.aul=null", "~datasets.busbra", "~encoders.random_init"])
    assert "aul" not in cfg.datasets and "busbra" not in cfg.datasets and len(cfg.datasets) == 6
    assert list(cfg.encoders) == ["student"]
    cfg = load_probe_config(ub, ["select_datasets=[pocus,fatty_liver]"])
    assert sorted(cfg.datasets) == ["fatty_liver", "pocus"]
    with pytest.raises(ConfigError, match="no dataset 'pocsu'.*did you mean 'pocus'"):
        load_probe_config(ub, ["~datasets.pocsu"])
    with pytest.raises(ConfigError, match=r"select_datasets names unknown dataset\(s\) \['nope'\]"):
        load_probe_config(ub, ["select_datasets=[pocus,nope]"])


def test_the_default_grid_solves_heads_to_their_optimum():
    p = load_probe_config(SIM).protocol
    assert (p.solver, list(p.wds), p.tol, p.max_iter) == ("lbfgs", [], 1e-2, 500)


def test_usjepa_preset_fills_defaults_but_user_values_win():
    cfg = load_probe_config("configs/probe/usjepa_protocol.yaml", ["protocol.pooling=[cls]", "protocol.seeds=[0]"])
    assert list(cfg.protocol.pooling) == ["cls"] and list(cfg.protocol.seeds) == [0]
    assert list(cfg.protocol.lrs) == [1e-3] and cfg.protocol.patience == 15
    assert list(cfg.protocol.few_shot) == [0.01, 0.05, 0.1, 0.5, 1.0] and cfg.protocol.robustness


def test_named_entries_can_be_changed_and_added_from_the_command_line():
    cfg = load_probe_config(SIM, ["encoders.salt.path=runs/x/latest.pt", "encoders.mae.kind=mae",
                                  "encoders.mae.path=runs/mae/latest.pt", "datasets.lesion.data.num_images=64"])
    assert cfg.encoders.salt.path == "runs/x/latest.pt" and cfg.encoders.mae.kind == "mae"
    assert cfg.datasets.lesion.data.num_images == 64 and cfg.datasets.lesion.label_kind == "classification"


@pytest.mark.parametrize("override,message", [
    ("protocol.seedz=[0]", "did you mean 'protocol.seeds'"),
    ("encoders.salt.pth=x", "did you mean 'encoders.salt.path'"),
    ("encoders.salt.kind=vae", "did you mean 'mae'"),
    ("protocol.pooling=[avg]", "protocol.pooling='avg' is not one of"),
    ("encoders.salt.path=\"\"", "encoders.salt.path is empty"),
    ("encoders.random_init.like=\"\"", "encoders.random_init.like is empty"),
    ("datasets.lesion.splits.val=\"\"", "datasets.lesion.val_size is 0"),
    ("protocol.few_shot=[5]", "few_shot shares must be in \\(0, 1\\]"),
    ("protocol.corruptions=[fog]", "protocol.corruptions='fog'"),
    ("protocol.solver=sgd", "protocol.solver='sgd' is not one of"),
    ("protocol.tol=0", "protocol.tol must be in"),
    ("datasets.lesion.val_size=2.5", "datasets.lesion.val_size=2.5 must be a share"),
])
def test_mistakes_are_explained(override, message):
    with pytest.raises(ConfigError, match=message):
        load_probe_config(SIM, [override])


def test_unknown_key_in_a_yaml_entry_names_it(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("encoders:\n  a: {kind: student, paht: x.pt}\ndatasets:\n  d: {}\n")
    with pytest.raises(ConfigError, match="paht"):
        load_probe_config(p)

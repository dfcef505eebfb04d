"""Probes on the simulated ultrasound tasks (slow: they simulate data, and the last one trains the demo)."""

import os

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler

from usjepa.data import DataConfig, build_dataset, make_patient_splits
from usjepa.eval import extract_features, linear_probe
from usjepa.eval.encoders import ProbeEncoder, weights_hash
from usjepa.models import build_vit

pytestmark = pytest.mark.usefixtures("one_thread")  # small probe workloads: one thread is fastest


def _sklearn_tuned_on_val(train, val, test):
    sc = StandardScaler().fit(train[0])
    best = None
    for c in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 1.0, 10.0):
        m = LogisticRegression(C=c, max_iter=3000).fit(sc.transform(train[0]), train[1])
        v = f1_score(val[1], m.predict(sc.transform(val[0])), average="macro")
        if best is None or v > best[0]:
            best = (v, f1_score(test[1], m.predict(sc.transform(test[0])), average="macro"))
    return best[1]


@pytest.mark.slow
def test_probe_matches_tuned_sklearn_on_simulated_lesion_features(tmp_path):
    cfg = OmegaConf.structured(DataConfig(source="simulate", root=str(tmp_path / "sim"), num_images=512,
                                          task="lesion", augment=False))
    ds = build_dataset(cfg, None, (64, 64), augment=False)
    torch.manual_seed(0)
    vit = build_vit("vit_tiny", depth=4, img_size=(64, 64), patch_size=8, in_chans=1).eval()
    fs = extract_features(ProbeEncoder("vit", "random", vit, weights_hash(vit), True), ds, last_k=2)
    x, y = fs.pooled("cls+mean", 2).numpy(), fs.label  # 768 correlated dims, a few hundred items
    ours, ref = [], []
    for seed in range(3):  # three patient-grouped splits: one split alone is too noisy to compare on
        split = make_patient_splits(fs.patient_id, (0.5, 0.2, 0.3), seed)
        tr, va, te = ((x[split == s], y[split == s]) for s in ("train", "val", "test"))
        ours.append(linear_probe(tr, va, te)["macro_f1"])
        ref.append(_sklearn_tuned_on_val(tr, va, te))
    assert np.mean(ours) >= np.mean(ref) - 0.01, (ours, ref)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The default demo, run once (about 5 minutes on 2 CPU cores): `usjepa demo`'s own code path."""
    from usjepa.demo import run_demo

    out = run_demo(tmp_path_factory.mktemp("demo") / "demo", size=os.environ.get("USJEPA_DEMO_SIZE", "tiny"))
    df = pd.read_csv(out / "probe" / "results.csv")
    return out, df[(df["probe"] == "linear") & (df["setting"] == "full")]


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the first test using the fixture pays for the whole demo
def test_demo_runs_every_stage_and_reports_what_it_measured(demo_run):
    """Every stage runs, and the table holds every encoder x task with ordered CIs, plus the plots."""
    out, full = demo_run
    assert set(full["encoder"]) == {"random_init", "mae_teacher", "salt_student"}
    assert set(full["task"]) == {"lesion", "organ", "lesion_size"}
    assert ((full["ci_low"] <= full["mean"] + 1e-9) & (full["mean"] <= full["ci_high"] + 1e-9)).all()
    for name in ("loss_curves.png", "README.md", "probe/results.png", "probe/results.md"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "salt" / "metrics.csv").read_text().count("\n") > 2
    table = (out / "README.md").read_text()
    for _, r in full.iterrows():  # the printed table quotes the CSV's numbers
        assert f"[{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]" in table or r["task"] == "lesion_size"


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_demo_salt_student_beats_random_init_by_more_than_the_ci_width(demo_run):
    """Issue checks: on the simulated lesion task the SALT student's macro-F1 exceeds the random-init encoder's by
    more than either bootstrap CI's width, so the two CIs do not overlap."""
    _, full = demo_run
    rows = full[full["task"] == "lesion"].set_index("encoder")
    student, floor = rows.loc["salt_student"], rows.loc["random_init"]
    ci_width = max(student["ci_high"] - student["ci_low"], floor["ci_high"] - floor["ci_low"])
    assert student["mean"] - floor["mean"] > ci_width, (student.to_dict(), floor.to_dict())
    assert student["ci_low"] > floor["ci_high"], (student.to_dict(), floor.to_dict())

import argparse
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from usjepa.eval import PatientLeakageError, load_probe_config, run_probe
from usjepa.eval.suite import add_arguments, run_from_args
from usjepa.models import build_vit, export_encoder

pytestmark = pytest.mark.usefixtures("one_thread")  # small probe workloads: one thread is fastest

TINY = dict(arch="vit_tiny", embed_dim=64, depth=2, num_heads=2, img_size=[32, 32], patch_size=8, in_chans=1,
            cls_token=True)


def write_manifest(root, n_patients=48, frames=2, seed=0):
    """A labelled folder + manifest: 3 classes drawn as a dark disc, a bright disc or a bright bar; split by patient."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    yy, xx = np.mgrid[:32, :32]
    rows = []
    for p in range(n_patients):
        label = p % 3
        split = ["train", "train", "train", "val", "test"][p % 5] if p >= 3 else ["train", "val", "test"][p]
        for f in range(frames):
            img = rng.uniform(0.3, 0.5, (32, 32))
            cy, cx = rng.integers(10, 22, 2)
            if label == 2:
                img[cy - 2:cy + 2, 4:28] = 0.95
            else:
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < 30] = 0.05 if label == 0 else 0.95
            path = root / "img" / f"p{p}_{f}.png"
            Image.fromarray((img * 255).astype(np.uint8)).save(path)
            rows.append(dict(path=f"img/{path.name}", label=label, target=float(cy), patient_id=f"p{p}", split=split))
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def write_suite(tmp_path, protocol: str, extra: str = "") -> str:
    manifest = write_manifest(tmp_path / "data")
    torch.manual_seed(123)  # not the random_init floor's seed: the two encoders differ
    vit = build_vit(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in TINY.items()})
    ckpt = export_encoder(vit, tmp_path / "student.safetensors", dict(TINY))
    cfg = tmp_path / "suite.yaml"
    cfg.write_text(f"""
out_dir: {tmp_path / "out"}
encoders:
  student: {{kind: student, path: {ckpt}}}
  random_init: {{kind: random, like: student}}
datasets:
  shapes:
    data: {{source: manifest, manifest: {manifest}, task: label, augment: false}}
{extra}
protocol:
{protocol}
batch_size: 32
""")
    return str(cfg)


FAST = """  img_size: [32, 32]
  seeds: [0]
  wds: [0.001, 0.01, 0.1]
  pooling: [mean, cls]
  last_k: [1, 2]
  bootstrap: 100
"""


def test_suite_writes_one_table_resumes_and_adds_encoders(tmp_path):
    cfg_path = write_suite(tmp_path, FAST)
    res = run_probe(load_probe_config(cfg_path))
    out = tmp_path / "out"
    df = pd.read_csv(out / "results.csv")
    assert res.status == "completed" and len(df) == 2
    assert set(df["encoder"]) == {"student", "random_init"} and set(df["setting"]) == {"full"}
    assert (df["n_train"] == 56).all() and (df["n_val"] == 20).all() and (df["n_test"] == 20).all()
    assert df["mean"].between(0, 1).all() and (df["ci_low"] <= df["ci_high"]).all()
    md = (out / "results.md").read_text()
    assert "| student |" in md and "| random_init |" in md and "shapes" in md
    assert (out / "results.png").stat().st_size > 1000
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "completed" and status["step"] == status["total_steps"] == 2
    sel = json.loads(df["selected"][0].replace("'", '"'))[0]
    assert sel["features"] in {f"{p}/k{k}{w}" for p in ("mean", "cls") for k in (1, 2) for w in ("", "+whitened")}

    # a second run finds every row done: nothing is recomputed, the table is unchanged
    n_lines = len((out / "rows.jsonl").read_text().splitlines())
    run_probe(load_probe_config(cfg_path))
    assert len((out / "rows.jsonl").read_text().splitlines()) == n_lines
    # a new encoder only adds its own rows
    run_probe(load_probe_config(cfg_path, ["encoders.floor2.kind=random", "encoders.floor2.like=student",
                                           "encoders.floor2.seed=7"]))
    df2 = pd.read_csv(out / "results.csv")
    assert len(df2) == 3 and set(df2["encoder"]) == {"student", "random_init", "floor2"}


def test_probing_refuses_splits_that_share_patients(tmp_path):
    cfg_path = write_suite(tmp_path, FAST, extra="    splits: {train: train, val: test, test: test}")
    with pytest.raises(PatientLeakageError, match=r"dataset 'shapes'.*p2: \['test', 'val'\]"):
        run_probe(load_probe_config(cfg_path))


def test_cli_prints_the_resolved_config(tmp_path, capsys):
    cfg_path = write_suite(tmp_path, FAST)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([cfg_path, "protocol.seeds=[3]", "--print-config"])
    assert run_from_args(args) == 0
    assert "- 3" in capsys.readouterr().out


@pytest.mark.slow
def test_every_setting_and_a_regression_task_land_in_the_table(tmp_path):
    protocol = FAST.replace("seeds: [0]", "seeds: [0, 1]") + """  few_shot: [0.5]
  robustness: true
  corruptions: [blur, speckle]
  severities: [3]
  knn: true
  knn_k: [3, 5]
  attentive: true
  attentive_epochs: 3
  attentive_lrs: [0.001]
  attentive_wds: [0.01]
"""
    cfg_path = write_suite(tmp_path, protocol)
    cfg = load_probe_config(cfg_path)
    cfg.datasets["center_y"] = cfg.datasets["shapes"].copy()
    cfg.datasets["center_y"].label_kind = "regression"
    res = run_probe(cfg)
    df = res.table
    assert len(df) == 2 * 2 * 6  # encoders x tasks x (full, few-shot, 2 corruptions, kNN, attentive)
    reg = df[df["task"] == "center_y"]
    assert (reg["metric"] == "r2").all() and reg["pearson_r"].notna().all()
    few = df[df["setting"] == "fewshot_0.5"]
    assert (few["n_train"] < 56).all()
    full = df[(df["setting"] == "full") & (df["probe"] == "linear") & (df["task"] == "shapes")]
    speckle = df[(df["setting"] == "speckle_s3") & (df["task"] == "shapes")]
    assert not np.allclose(full.sort_values("encoder")["mean"].to_numpy(),
                           speckle.sort_values("encoder")["mean"].to_numpy())
    details = [json.loads(x) for x in (tmp_path / "out" / "details.jsonl").read_text().splitlines()]
    assert all(len(d["per_seed"]) in (1, 2) for d in details)
    assert "confusion" in details[0]["per_seed"][0]


def test_shuffling_test_labels_changes_no_selection_anywhere_in_the_suite(tmp_path):
    protocol = FAST + "  knn: true\n  knn_k: [1, 5]\n  attentive: true\n  attentive_epochs: 2\n"
    cfg_path = write_suite(tmp_path, protocol)

    def run(out):
        cfg = load_probe_config(cfg_path, ["out_dir=" + str(tmp_path / out)])
        del cfg.encoders["random_init"]  # one encoder is enough here
        return run_probe(cfg)

    res_a = run("a")
    manifest = tmp_path / "data" / "manifest.csv"
    df = pd.read_csv(manifest)
    test = df["split"] == "test"
    df.loc[test, "label"] = np.random.default_rng(0).permutation(df.loc[test, "label"].to_numpy())
    df.to_csv(manifest, index=False)
    res_b = run("b")

    def choices(out):
        rows = [json.loads(x) for x in (out / "details.jsonl").read_text().splitlines()]
        return {(r["encoder"], r["probe"], r["setting"]): [(s["selected"], s["val"]) for s in r["per_seed"]]
                for r in rows}

    assert choices(tmp_path / "a") == choices(tmp_path / "b")  # every head / k chosen identically
    assert len(res_a.table) == len(res_b.table) == 3
    assert not np.allclose(res_a.table["mean"], res_b.table["mean"])  # only the reported test numbers moved


def test_a_stop_request_ends_between_settings_and_the_next_run_finishes(tmp_path):
    cfg_path = write_suite(tmp_path, FAST + "  few_shot: [0.5]\n")
    polls = []
    stop_after_first_row = lambda: polls.append(1) or len(polls) > 2  # noqa: E731  (encoder, setting, setting)
    res = run_probe(load_probe_config(cfg_path), should_stop=stop_after_first_row)
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert res.status == "preempted" and status["state"] == "preempted" and len(res.table) == 1
    done = run_probe(load_probe_config(cfg_path))
    assert done.status == "completed" and len(done.table) == 4
    assert len((tmp_path / "out" / "rows.jsonl").read_text().splitlines()) == 4  # the first row was not redone


def _single_class_test_split(root):
    """A copy of the shapes manifest whose test split holds one class only."""
    manifest = write_manifest(root)
    df = pd.read_csv(manifest)
    df.loc[df["split"] == "test", "label"] = 0
    df.to_csv(manifest, index=False)
    return manifest


def test_missing_and_degenerate_datasets_are_skipped_counted_or_refused_when_strict(tmp_path, capsys):
    degenerate = _single_class_test_split(tmp_path / "deg")
    extra = f"""  gone:
    data: {{source: ultrabench, root: {tmp_path / "no_such_folder"}, task: label}}
  one_class:
    data: {{source: manifest, manifest: {degenerate}, task: label, augment: false}}"""
    cfg_path = write_suite(tmp_path, FAST, extra=extra)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run_from_args(parser.parse_args([cfg_path, "~encoders.random_init"])) == 0
    out = capsys.readouterr().out
    assert "skipped 2 dataset(s): gone (its folder" in out and "one_class (the test split has a single class" in out
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    assert set(df["task"]) == {"shapes"}  # the dataset that is there was probed
    assert "Skipped 2 of 3 datasets" in (tmp_path / "out" / "results.md").read_text()
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert status["state"] == "completed" and set(status["skipped_datasets"]) == {"gone", "one_class"}
    for drop, why in (("~datasets.one_class", "dataset 'gone': its folder .*no_such_folder does not exist"),
                      ("~datasets.gone", "dataset 'one_class': the test split has a single class")):
        assert run_from_args(parser.parse_args([cfg_path, "strict=true", "out_dir=" + str(tmp_path / "s"), drop])) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1 and re.search(why, err)


def test_a_val_size_larger_than_the_dataset_is_an_error_naming_it(tmp_path, capsys):
    cfg_path = write_suite(tmp_path, FAST, extra="    splits: {train: train, val: '', test: test}\n    val_size: 500")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run_from_args(parser.parse_args([cfg_path, "~encoders.random_init"])) == 2
    err = capsys.readouterr().err
    assert "dataset 'shapes' (datasets.shapes.val_size=500): cannot carve 500 items out of a split of 56" in err
    res = run_probe(load_probe_config(cfg_path, ["~encoders.random_init", "datasets.shapes.val_size=0.25",
                                                 "out_dir=" + str(tmp_path / "share")]))
    assert res.table["n_val"].tolist() == [14]  # a share: 14 of the 56 training items, whole patients


def test_probe_help_documents_dataset_selection():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = parser.format_help()
    assert "select_datasets=[pocus,aul]" in text and "~datasets.aul" in text and "strict=true" in text


def test_the_suite_carves_a_pocus_like_dataset_by_video(tmp_path):
    """UltraBench POCUS: records name their source video, no patient. The suite's train / val / test (val carved out
    of train+val as configs/probe/ultrabench.yaml does) never share a video."""
    from tests.test_data_splits import write_pocus_like
    from usjepa.eval.encoders import build_probe_encoder
    from usjepa.eval.suite import SuiteRunner

    root = write_pocus_like(tmp_path / "ub", n_videos=12, frames=4, stills=4)
    cfg_path = write_suite(tmp_path, FAST)
    pocus = {"data.source": "ultrabench", "data.root": root, "data.task": "label", "splits.train": "train+val",
             "splits.val": "''", "val_size": 0.25}
    cfg = load_probe_config(cfg_path, ["~encoders.random_init", "~datasets.shapes"]
                            + [f"datasets.pocus.{k}={v}" for k, v in pocus.items()])
    runner = SuiteRunner(cfg)
    enc = build_probe_encoder("student", cfg.encoders.student, cfg.encoders, runner.device)
    splits, _ = runner.splits(enc, runner.handles["pocus"])
    video = {k: {p.split(":", 1)[1] for p in getattr(splits, k).patient_id} for k in ("train", "val", "test")}
    assert all(video.values()) and all(v.endswith((".mp4", ".jpg")) for s in video.values() for v in s)
    assert not video["train"] & video["val"] and not video["train"] & video["test"] and not video["val"] & video["test"]

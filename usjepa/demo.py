"""`usjepa demo`: the whole method on simulated ultrasound, from data to a results table, in one run folder.

1. simulate a labelled B-mode dataset (patient-grouped train / val / test splits);
2. stage 1: train a pixel-MAE teacher on the train split (no labels);
3. stage 2: train a SALT student against the frozen teacher (and, with --compare, an EMA-JEPA student of the
   same size and budget);
4. probe the random-init floor, the teacher and the students on the simulated tasks (linear probes selected on
   val, reported on test with bootstrap 95% CIs) and print the table;
5. write loss curves and a probe bar chart beside the table.
Every number printed comes from this run.
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

# sizes: tiny runs on 2 CPU cores in minutes; small / base are for a GPU
SIZES = {
    "tiny": dict(model=["model.arch=vit_tiny", "model.depth=4", "model.patch_size=8", "model.img_size=[64,64]"],
                 predictor=["predictor.depth=2", "predictor.embed_dim=96", "predictor.num_heads=4"],
                 decoder=["objective.mae.decoder_dim=96", "objective.mae.decoder_depth=2",
                          "objective.mae.decoder_heads=4"],
                 images=2000, sim_size=128, batch=32, mae_steps=300, student_steps=1000, img=64, workers=0,
                 # 300 steps of normalised-pixel MAE on speckle learn little; raw pixels keep echogenicity
                 norm_pix=False, teacher_last_k=4, precision="fp32"),
    "small": dict(model=["model.arch=vit_small", "model.depth=0", "model.patch_size=16", "model.img_size=[224,224]"],
                  predictor=["predictor.depth=6", "predictor.embed_dim=384", "predictor.num_heads=12"],
                  decoder=["objective.mae.decoder_dim=256", "objective.mae.decoder_depth=4",
                           "objective.mae.decoder_heads=8"],
                  images=8000, sim_size=256, batch=128, mae_steps=3000, student_steps=6000, img=224, workers=8,
                  norm_pix=True, teacher_last_k=4, precision="auto"),
    "base": dict(model=["model.arch=vit_base", "model.depth=0", "model.patch_size=16", "model.img_size=[224,224]"],
                 predictor=["predictor.depth=12", "predictor.embed_dim=384", "predictor.num_heads=16"],
                 decoder=["objective.mae.decoder_dim=512", "objective.mae.decoder_depth=8",
                          "objective.mae.decoder_heads=16"],
                 images=20000, sim_size=256, batch=256, mae_steps=8000, student_steps=16000, img=224, workers=10,
                 norm_pix=True, teacher_last_k=4, precision="auto"),
}


# The demo's simulated data: one frame per patient and a quarter of the patients in the test split (many test
# patients -> tight patient-level CIs), and lesions of 20-40% of the imaging depth, which stay visible at the tiny
# size's 64 px (the simulator's default is 8-25%). Pretraining uses the train split only, without labels.
SIM = {"sim_frames_per_patient": 1, "sim_lesion_size": [0.2, 0.4], "split_fractions": [0.6, 0.15, 0.25]}


def _sim(s: dict) -> dict:
    """The simulator settings of a size, as DataConfig fields (one place for data, pretraining and probes)."""
    return {"sim_size": s["sim_size"], **SIM}


def _stage_overrides(s: dict, out: Path, data_root: Path, steps: int, seed: int) -> list[str]:
    sim = [f"data.{k}={v}".replace(" ", "") for k, v in _sim(s).items()]
    # precisions pinned: `auto` would pick bf16 on CPUs with bf16 units and change the table between machines
    return [*s["model"], *s["predictor"], *sim, f"data.root={data_root}", f"data.num_images={s['images']}",
            f"data.batch_size={s['batch']}", f"data.num_workers={s['workers']}", f"train.steps={steps}",
            f"train.seed={seed}", f"train.out_dir={out}", "train.log_every=10", f"train.precision={s['precision']}",
            f"train.ckpt_every={max(steps // 2, 1)}",
            "data.task=lesion"]


def run_demo(out_dir: str | Path = "runs/demo", size: str = "tiny", compare: bool = False, seed: int = 0,
             scale: float = 1.0, train_seed: int | None = None) -> Path:
    """Run every stage into `out_dir` (each stage resumes if its folder already holds a finished run).

    `seed` draws the simulated data; `train_seed` (default: `seed`) seeds both pretraining stages and the
    random-init encoder, so a seed study can vary training on fixed data and fixed probes."""
    from omegaconf import OmegaConf

    from teachers.spec import TeacherConfig
    from usjepa.config import load_config
    from usjepa.data import DataConfig, build_dataset
    from usjepa.eval import load_probe_config, run_probe
    if size not in SIZES:
        raise ValueError(f"unknown demo size '{size}'; choose one of {', '.join(SIZES)}")
    s = SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data_root = out / "data"
    train_seed = seed if train_seed is None else train_seed
    mae_steps = max(1, int(s["mae_steps"] * scale))
    student_steps = max(1, int(s["student_steps"] * scale))

    print(f"[1/5] simulating {s['images']} labelled B-mode frames into {data_root}", flush=True)
    data_cfg = OmegaConf.structured(
        DataConfig(source="simulate", root=str(data_root), num_images=s["images"], seed=seed, task="lesion", **_sim(s))
    )
    build_dataset(data_cfg, split=None, img_size=(s["img"], s["img"]), augment=False, seed=seed)

    print(f"[2/5] stage 1: pixel-MAE teacher, {mae_steps} steps", flush=True)
    mae_cfg = load_config(_pretrain("mae_vit_tiny_sim.yaml"),
                          _stage_overrides(s, out / "teacher", data_root, mae_steps, train_seed) + s["decoder"]
                          + [f"objective.mae.norm_pix_loss={str(s['norm_pix']).lower()}"])
    _train_stage(mae_cfg, "stage 1 (pixel-MAE teacher)", out)
    teacher_ckpt = out / "teacher" / "latest.pt"

    print(f"[3/5] stage 2: SALT student against the frozen teacher, {student_steps} steps", flush=True)
    salt_cfg = load_config(_pretrain("salt_vit_tiny_sim.yaml"),
                           _stage_overrides(s, out / "salt", data_root, student_steps, train_seed))
    # targets: the mean of the teacher's last blocks (as data2vec), which keeps the local detail its early blocks hold
    salt_cfg.teacher = OmegaConf.structured(TeacherConfig(family="native", checkpoint=str(teacher_ckpt),
                                                          mean_last_k=s["teacher_last_k"], precision=s["precision"]))
    _train_stage(salt_cfg, "stage 2 (SALT student)", out)
    runs = {"teacher (MAE)": out / "teacher", "SALT student": out / "salt"}
    if compare:
        print(f"[3b/5] EMA-JEPA student of the same size and budget, {student_steps} steps", flush=True)
        ema_cfg = load_config(_pretrain("ema_jepa_vit_tiny_sim.yaml"),
                              _stage_overrides(s, out / "ema_jepa", data_root, student_steps, train_seed))
        _train_stage(ema_cfg, "stage 2b (EMA-JEPA student)", out)
        runs["EMA-JEPA student"] = out / "ema_jepa"

    print("[4/5] probing random-init / teacher / students on the simulated tasks", flush=True)
    encoders = {
        "random_init": {"kind": "random", "like": "salt_student", "seed": train_seed},
        "mae_teacher": {"kind": "mae", "path": str(out / "teacher" / "encoder.safetensors")},
        "salt_student": {"kind": "student", "path": str(out / "salt" / "encoder.safetensors")},
    }
    if compare:
        encoders["ema_jepa_student"] = {"kind": "student", "path": str(out / "ema_jepa" / "encoder.safetensors")}
    data = {"source": "simulate", "root": str(data_root), "num_images": s["images"], "seed": seed, "augment": False,
            **_sim(s)}
    probe = {
        "out_dir": str(out / "probe"),
        "encoders": encoders,
        "datasets": {
            "lesion": {"data": {**data, "task": "lesion"}},
            "organ": {"data": {**data, "task": "organ"}},
            "lesion_size": {"data": {**data, "task": "size"}, "label_kind": "regression"},
        },
        # heads on the last 4 blocks (mean-pooled patch tokens, or with the CLS tokens), lr x wd, picked on val
        "protocol": {"preset": "grid", "img_size": [s["img"], s["img"]], "seeds": [0, 1, 2],
                     "pooling": ["mean"], "last_k": [4], "bootstrap": 1000},
        "batch_size": 128,
    }
    probe_yaml = out / "probe.yaml"
    OmegaConf.save(OmegaConf.create(probe), probe_yaml)
    res = run_probe(load_probe_config(probe_yaml))

    print("[5/5] plots", flush=True)
    curves = plot_loss_curves(runs, out / "loss_curves.png")
    table = (res.out_dir / "results.md").read_text()
    summary = out / "README.md"
    summary.write_text(f"# usjepa demo ({size})\n\nTotal time {time.time() - t0:.0f} s.\n\n{table}\n\n"
                       f"{_numerics_note(runs)}\n\n"
                       f"![loss curves]({curves.name})\n\n![probes](probe/results.png)\n")
    print()
    print(table)
    print(f"\nrun folder: {out}  (loss curves: {curves}, probe chart: {res.out_dir / 'results.png'}, "
          f"table: {res.out_dir / 'results.csv'}); {time.time() - t0:.0f} s")
    return out


def _numerics_note(runs: dict[str, Path]) -> str:
    """The arithmetic behind the table: each stage's effective precisions (from its env.json) and the CPU pinning."""
    import json

    from usjepa import numerics

    lines = ["## Numerics", ""]
    for name, run in runs.items():
        try:
            prec = json.loads((run / "env.json").read_text()).get("precision") or {}
        except (OSError, ValueError):
            prec = {}
        lines.append(f"- {name}: student {prec.get('student', '?')}, teacher {prec.get('teacher') or 'none'}, "
                     f"on {prec.get('device', '?')}")
    d = numerics.describe()
    if d["pinned"]:
        lines.append(f"- CPU arithmetic pinned to {d['cpu_capability']} kernels with {d['threads']} threads "
                     f"({', '.join(f'{k}={v}' for k, v in d['env'].items())}): the same table on any x86-64 CPU with "
                     "AVX2")
    else:
        lines.append(f"- CPU arithmetic not pinned ({d['cpu_capability']} kernels, {d['threads']} threads): other "
                     "machines may print other numbers")
    return "\n".join(lines)


def _train_stage(cfg, what: str, out: Path) -> None:
    """Train one stage; a stage that stopped early (SIGTERM, SIGINT, preemption) stops the demo, so no later stage
    runs on an unfinished teacher. Running the same command again resumes where it stopped."""
    from usjepa.errors import UsjepaError
    from usjepa.train import run_training

    result = run_training(cfg)
    if result.status != "completed":
        raise UsjepaError(f"the demo stopped during {what} at step {result.step} ({result.status}; saved in "
                          f"{result.run_dir}); run the same `usjepa demo --out {out}` again to resume")


def _pretrain(name: str) -> Path:
    """The packaged recipe files (the demo runs from a checkout or from any folder)."""
    here = Path("configs/pretrain") / name
    if here.is_file():
        return here
    return Path(__file__).resolve().parents[1] / "configs" / "pretrain" / name


def plot_loss_curves(runs: dict[str, Path], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.2), squeeze=False)
    for ax, (name, run) in zip(axes[0], runs.items()):
        with open(run / "metrics.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("loss")]
        ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], lw=1.5)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES), help="tiny: CPU minutes; small/base: GPU")
    parser.add_argument("--compare", action="store_true", help="also train an EMA-JEPA student (same size, budget)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the training steps (e.g. 0.2 for a smoke run)")
    parser.add_argument("--train-seed", type=int, default=None,
                        help="seed of both pretraining stages and the random-init encoder (default: --seed, which "
                             "also draws the data)")
    parser.add_argument("--host-numerics", action="store_true",
                        help="use this CPU's fastest kernels and all its threads instead of the pinned AVX2 "
                             "arithmetic (faster on big machines; the table may then differ from the README's)")


def run_from_args(args: argparse.Namespace) -> int:
    if args.size == "tiny" and not args.host_numerics:
        from usjepa import numerics

        argv = ["demo", "--out", str(args.out), "--size", args.size, "--seed", str(args.seed), "--scale",
                str(args.scale), *(["--compare"] if args.compare else []),
                *(["--train-seed", str(args.train_seed)] if args.train_seed is not None else [])]
        numerics.reexec_pinned(argv)  # returns only when already pinned or when this CPU has no AVX2
    run_demo(args.out, args.size, args.compare, args.seed, args.scale, args.train_seed)
    return 0

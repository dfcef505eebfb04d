"""The training loop: a thin function around an Objective. It knows no cluster: `should_stop` is its hook.

Per step: micro-batches (accumulation) -> loss -> backward -> clip -> AdamW with per-step lr/wd ->
objective.after_step (EMA) -> metrics row / validation / checkpoint / stop check.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from usjepa.config import ConfigError, save_run_config
from usjepa.errors import UsjepaError
from usjepa.models.checkpoint_io import CheckpointError, export_encoder, strict_load
from usjepa.train.build import build_mask_collator, build_objective, holdout_split
from usjepa.train.checkpoint import (
    FORMAT_VERSION,
    load_training_checkpoint,
    rng_state,
    rotate_step_checkpoints,
    save_atomic,
    set_rng_state,
)
from usjepa.train.diagnostics import effective_rank, feature_std
from usjepa.train.distributed import DistEnv, init_distributed, resolve_env
from usjepa.train.mask_preview import record_masks
from usjepa.train.sampler import ResumableBatchSampler, SeededItems, epoch_length, item_seed
from usjepa.train.schedules import optim_schedules
from usjepa.train.step import apply_update, autocast_context, train_step

log = logging.getLogger(__name__)

METRIC_FIELDS = [
    "step",
    "epoch",
    "loss",
    "val_loss",
    "probe_f1",
    "lr",
    "wd",
    "grad_norm",
    "images_per_s",
    "peak_mem_mb",
    "feat_std",
    "eff_rank",
    "bad_items",
    "elapsed_s",
]
# config keys that must match between a run folder's checkpoint and the config that resumes it
RESUME_KEYS = (
    "model",
    "predictor",
    "objective",
    "mask",
    "teacher.family",
    "teacher.checkpoint",
    "teacher.arch",
    "teacher.layer",
    "teacher.mean_last_k",
    "teacher.norm",
    "data.batch_size",
    "train.seed",
)


class TrainingError(UsjepaError, RuntimeError):
    """The run cannot go on (diverged loss, bad data share...); the last good checkpoint is kept."""


@dataclass
class TrainResult:
    status: str  # completed | preempted
    step: int
    run_dir: Path
    best_val: float | None = None


def run_training(cfg: DictConfig, should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train (or resume) the run described by `cfg` in `cfg.train.out_dir`."""
    env = resolve_env()
    started = env.world_size > 1 and not (dist.is_available() and dist.is_initialized())
    init_distributed(env)
    try:
        return _Trainer(cfg, env, should_stop).run()
    finally:
        if started:
            dist.destroy_process_group()


def _param_groups(modules: dict[str, torch.nn.Module]) -> list[dict]:
    decay, no_decay = [], []
    for mod in modules.values():
        for name, p in mod.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)  # as I-JEPA, V-JEPA, MAE
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class _Trainer:
    def __init__(self, cfg: DictConfig, env: DistEnv, should_stop: Callable[[], bool] | None):
        self.cfg, self.env, self.should_stop = cfg, env, should_stop
        self.main = env.rank == 0
        self.run_dir = Path(cfg.train.out_dir)
        if torch.cuda.is_available():
            self.device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        else:
            self.device = torch.device("cpu")
        prec = cfg.train.precision
        self.amp = (prec == "bf16") or (prec == "auto" and self.device.type == "cuda")
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)

    # ------------------------------------------------------------------ setup
    def _data(self):
        from usjepa.data import build_dataset, collate_skip_bad

        cfg = self.cfg
        img = tuple(cfg.model.img_size)
        if cfg.teacher.cache and cfg.data.augment:
            raise ConfigError("teacher.cache holds targets of fixed views: set data.augment=false to train from it")
        ds = build_dataset(cfg.data, split="train", img_size=img, augment=cfg.data.augment, seed=cfg.data.seed)
        frac = cfg.train.val_fraction if cfg.train.val_every > 0 else 0.0
        patients = getattr(ds, "patient_ids", None)
        train_idx, val_idx = holdout_split(len(ds), patients, frac, cfg.train.seed)
        log.info("training on %d of %d items, %d held out for validation (train.val_fraction=%g)",
                 len(train_idx), len(ds), len(val_idx), frac)
        self.dataset, self.train_idx, self.val_idx = ds, train_idx, val_idx
        self.val_dataset = (
            build_dataset(cfg.data, split="train", img_size=img, augment=False, seed=cfg.data.seed)
            if len(val_idx)
            else None
        )
        self.base_collate = collate_skip_bad

    def _weights(self) -> np.ndarray | None:
        by = getattr(self.cfg.data, "balance", "none")
        if not by or by == "none":
            return None
        from usjepa.data import sampling_weights

        w = np.asarray(sampling_weights(self.dataset, by=by, cap=getattr(self.cfg.data, "balance_cap", None)))
        w = w[self.train_idx]
        return w / w.sum()

    def _loader(self, start_step: int):
        cfg = self.cfg
        sampler = ResumableBatchSampler(
            len(self.train_idx),
            cfg.data.batch_size,
            cfg.train.seed,
            self.env.rank,
            self.env.world_size,
            cfg.optim.accum_steps,
            self._weights(),
            start_step,
            epoch_items=self.epoch_items,
        )
        self.steps_per_epoch = sampler.steps_per_epoch
        return torch.utils.data.DataLoader(
            SeededItems(self.dataset, self.train_idx),
            batch_sampler=sampler,
            collate_fn=self.collator,
            num_workers=cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if cfg.data.num_workers else None,
        )

    def _to_device(self, batch: dict) -> dict:
        out = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        out["masks"] = [m.to(self.device) for m in batch["masks"]]
        return out

    # ------------------------------------------------------------------ checkpoints
    def _state(self, step: int) -> dict:
        mods = {**self.objective.trainable_modules(), **self.objective.frozen_state()}
        return {
            "version": FORMAT_VERSION,
            "step": step,
            "objective": self.cfg.objective.name,
            **{k: m.state_dict() for k, m in mods.items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": {},
            "rng": rng_state(),
            "sampler": {
                "seed": int(self.cfg.train.seed),
                "epoch": step // max(self.steps_per_epoch, 1),
                "offset": step % max(self.steps_per_epoch, 1),
            },
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "best_val": self.best_val,
        }

    def _save(self, step: int, periodic: bool) -> None:
        if not self.main:
            return
        state = self._state(step)
        save_atomic(state, self.run_dir / "latest.pt")
        if periodic:
            save_atomic(state, self.run_dir / f"step_{step}.pt")
            rotate_step_checkpoints(self.run_dir, self.cfg.train.keep_last)
        self.last_ckpt = time.time()

    def _resume(self) -> int:
        path = self.run_dir / "latest.pt"
        if not path.exists():
            return 0
        if not self.cfg.train.resume:
            raise ConfigError(
                f"'{path}' exists and train.resume=false: point train.out_dir at a new folder "
                "(a run folder is never overwritten)"
            )
        ckpt = load_training_checkpoint(path)
        saved = OmegaConf.create(ckpt["config"])
        diffs = [
            k
            for k in RESUME_KEYS
            if OmegaConf.select(saved, k, default=None) != OmegaConf.select(self.cfg, k, default=None)
        ]
        if diffs:
            raise CheckpointError(
                f"'{path}' was written by a run with different settings for {', '.join(diffs)}; "
                "resume with the same config or use another train.out_dir"
            )
        mods = {**self.objective.trainable_modules(), **self.objective.frozen_state()}
        for k, m in mods.items():
            if k not in ckpt:
                raise CheckpointError(f"'{path}' has no '{k}' entry for objective {self.cfg.objective.name}")
            strict_load(m, ckpt[k], f"'{path}' [{k}]")
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"optimizer state in '{path}' does not match the model: {e}") from None
        set_rng_state(ckpt["rng"])
        self.best_val = ckpt.get("best_val")
        log.info("resumed from %s at step %d", path, ckpt["step"])
        return int(ckpt["step"])

    # ------------------------------------------------------------------ bookkeeping
    def _status(self, state: str, step: int, error: str | None = None) -> None:
        if not self.main:
            return
        doc = {
            "state": state,
            "step": step,
            "total_steps": self.total,
            "error": error,
            "updated": time.time(),
            "last_ckpt": self.last_ckpt,
            "objective": self.cfg.objective.name,
        }
        tmp = self.run_dir / f".status.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.run_dir / "status.json")

    def _open_metrics(self, start_step: int) -> None:
        self.metrics_path = self.run_dir / "metrics.csv"
        if not self.main:
            return
        rows = []
        if self.metrics_path.exists():  # drop rows past the checkpoint: a resumed run never duplicates steps
            with open(self.metrics_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= start_step]
        tmp = self.metrics_path.with_name(".metrics.csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.metrics_path)

    def _write_row(self, row: dict) -> None:
        if self.main:
            with open(self.metrics_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore").writerow(row)

    def _all_mean(self, x: torch.Tensor) -> torch.Tensor:
        if self.env.world_size > 1:
            x = x.clone()
            dist.all_reduce(x)
            x /= self.env.world_size
        return x

    @torch.no_grad()
    def _val_loss(self) -> float:
        cfg = self.cfg
        obj = self.objective
        obj.eval()
        items = SeededItems(self.val_dataset, self.val_idx)
        bs = max(1, cfg.data.batch_size // self.env.world_size)
        total, n = 0.0, 0
        for b in range(min(cfg.train.val_batches, math.ceil(len(items) / bs))):
            keys = [(i, item_seed(cfg.train.seed, -1, i)) for i in range(b * bs, min((b + 1) * bs, len(items)))]
            batch = self.collator([items[k] for k in keys])
            if batch is None:
                continue
            with self._autocast():
                loss, _ = obj(self._to_device(batch))
            total += float(loss) * len(keys)
            n += len(keys)
        obj.train()
        return total / max(n, 1)

    def _autocast(self):
        return autocast_context(self.device, self.amp)

    # ------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        self.last_ckpt = None
        self.best_val = None
        self.total = 0
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            return self._run()
        except BaseException as e:
            if not isinstance(e, (KeyboardInterrupt, SystemExit)):
                self._status("failed", getattr(self, "step", 0), f"{type(e).__name__}: {e}")
            raise

    def _run(self) -> TrainResult:
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed % 2**32)
        self._data()
        self.epoch_items = epoch_length(self.dataset, self.train_idx, cfg.data.balance, cfg.data.balance_cap)
        per_epoch = self.epoch_items // cfg.data.batch_size
        if per_epoch < 1:
            raise ConfigError(
                f"data.batch_size={cfg.data.batch_size} is larger than the training set ({len(self.train_idx)} items)"
            )
        self.total = cfg.train.epochs * per_epoch if cfg.train.epochs > 0 else cfg.train.steps
        self.objective = build_objective(cfg, self.total).to(self.device)
        self.collator = build_mask_collator(cfg, self.base_collate)
        if self.main:  # the run's effective masking, drawn as training draws it -> masks.json
            record_masks(cfg, self.collator, self.run_dir, self.env.world_size,
                         SeededItems(self.dataset, self.train_idx))
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.objective.trainable_modules()),
            lr=o.lr,
            betas=tuple(o.betas),
            eps=o.eps,
            weight_decay=o.weight_decay,
        )
        lr_s, wd_s = optim_schedules(o, cfg.data.batch_size, self.total, per_epoch)
        start = self._resume()
        self.step = start
        if self.main:
            save_run_config(cfg, self.run_dir)
        self._open_metrics(start)
        self._status("running", start)
        if start >= self.total:
            self._finish(start)
            return TrainResult("completed", start, self.run_dir, self.best_val)

        model = self.objective
        if self.env.world_size > 1:
            model = DistributedDataParallel(
                self.objective,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        self.objective.train()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        loader = self._loader(start)
        it = iter(loader)
        t0 = time.time()
        window_t, window_imgs = time.time(), 0
        bar = tqdm(
            total=self.total,
            initial=start,
            disable=not (cfg.train.progress and self.main),
            desc=f"{cfg.objective.name}",
            dynamic_ncols=True,
            mininterval=1.0,
        )
        accum = cfg.optim.accum_steps
        for step in range(start, self.total):
            for g in self.optimizer.param_groups:
                g["lr"] = float(lr_s[step])
                if g.get("apply_wd"):
                    g["weight_decay"] = float(wd_s[step])
            micro, n_imgs = [], 0
            for _ in range(accum):
                batch = next(it)
                while batch is None:  # every item of this micro-batch was bad: take the next one
                    if self.env.world_size > 1:
                        raise TrainingError("a whole micro-batch was unreadable on one rank; see the bad-item log")
                    batch = next(it)
                n_imgs += batch["image"].shape[0]
                micro.append(self._to_device(batch))
            loss_t, logs, gnorm = train_step(
                model,
                self.objective,
                self.optimizer,
                micro,
                params,
                o.clip_grad,
                self.amp,
                self.device,
                distributed=self.env.world_size > 1,
            )
            del micro
            loss_v = float(self._all_mean(loss_t))
            if not math.isfinite(loss_v):
                self.optimizer.zero_grad(set_to_none=True)
                raise TrainingError(
                    f"loss became {loss_v} at step {step + 1}; stopped, and '{self.run_dir / 'latest.pt'}' still "
                    f"holds the last good state (step {self.last_ckpt_step()}). Try a lower optim.lr, "
                    "optim.clip_grad > 0, or train.precision=fp32, and check the data for broken images."
                )
            apply_update(self.objective, self.optimizer, step + 1)
            self.step = done = step + 1
            window_imgs += n_imgs * self.env.world_size
            bar.update(1)
            row = None
            if done % cfg.train.log_every == 0 or done == self.total:
                now = time.time()
                feats = logs.get("features")
                row = {
                    "step": done,
                    "epoch": step // self.steps_per_epoch,
                    "loss": f"{loss_v:.6g}",
                    "lr": f"{lr_s[step]:.6g}",
                    "wd": f"{wd_s[step]:.6g}",
                    "grad_norm": f"{float(gnorm):.4g}",
                    "images_per_s": f"{window_imgs / max(now - window_t, 1e-9):.2f}",
                    "peak_mem_mb": f"{_peak_mem_mb(self.device):.0f}",
                    "feat_std": "" if feats is None else f"{feature_std(feats):.4g}",
                    "eff_rank": "" if feats is None else f"{effective_rank(feats):.4g}",
                    "bad_items": self._bad_count(),
                    "elapsed_s": f"{now - t0:.1f}",
                }
                window_t, window_imgs = now, 0
                bar.set_postfix(loss=f"{loss_v:.4f}", lr=f"{lr_s[step]:.2e}")
            if cfg.train.val_every and len(self.val_idx) and (done % cfg.train.val_every == 0 or done == self.total):
                val = self._val_loss()
                row = row or {"step": done, "epoch": step // self.steps_per_epoch, "loss": f"{loss_v:.6g}"}
                row["val_loss"] = f"{val:.6g}"
                if self.best_val is None or val < self.best_val:
                    self.best_val = val
                    if self.main:
                        save_atomic(self._state(done), self.run_dir / "best.pt")
            if cfg.train.probe_every and done % cfg.train.probe_every == 0:
                row = row or {"step": done, "loss": f"{loss_v:.6g}"}
                row["probe_f1"] = self._probe()
            if row is not None:
                self._write_row(row)
            if done % cfg.train.ckpt_every == 0 and done < self.total:
                self._save(done, periodic=True)
                self._status("running", done)
            if self.should_stop is not None and done < self.total and self._stop_requested():
                self._save(done, periodic=False)
                self._status("preempted", done)
                bar.close()
                log.warning("stop requested: saved %s at step %d", self.run_dir / "latest.pt", done)
                return TrainResult("preempted", done, self.run_dir, self.best_val)
        bar.close()
        self._save(self.total, periodic=True)
        self._finish(self.total)
        return TrainResult("completed", self.total, self.run_dir, self.best_val)

    def last_ckpt_step(self) -> int:
        p = self.run_dir / "latest.pt"
        if not p.exists():
            return 0
        try:
            return int(load_training_checkpoint(p)["step"])
        except CheckpointError:
            return 0

    def _stop_requested(self) -> bool:
        flag = torch.tensor([1.0 if self.should_stop() else 0.0])
        if self.env.world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _bad_count(self):
        rep = getattr(self.dataset, "bad_report", None)
        if rep is None:
            return ""
        try:
            r = rep()
            return len(r) if hasattr(r, "__len__") else r
        except Exception:  # a report is advisory; never let it stop training
            return ""

    def _probe(self) -> str:
        try:
            from usjepa.eval.periodic import periodic_probe
        except ImportError:
            return ""
        res = periodic_probe(self.objective.student, self.cfg, self.device)
        return "" if res is None else f"{res:.4f}"

    def _finish(self, step: int) -> None:
        if self.main:
            export_encoder(
                self.objective.student,
                self.run_dir / "encoder.safetensors",
                OmegaConf.to_container(self.cfg.model, resolve=True),
            )
        self._status("completed", step)

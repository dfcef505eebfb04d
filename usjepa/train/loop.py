"""The training loop: a thin function around an Objective. It knows no cluster: `should_stop` is its hook.

Per step: micro-batches (accumulation) -> loss -> backward -> clip -> AdamW with per-step lr/wd ->
objective.after_step (EMA) -> the periodic objects of `usjepa.train.periodic` (metrics row, validation and
best.pt, probe, checkpoint, stop check). The run folder (lock, resume point, config check, files) is
`usjepa.io.runfolder.RunFolder`; every collective goes through `usjepa.train.collectives` (FSDP2's own gathers
aside). The large-run options (activation checkpointing, FSDP2 in place of DDP, compile) are applied by
`usjepa.train.placement.place_models` before the optimizer is built.
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from usjepa import numerics
from usjepa.config import ConfigError, PretrainConfig, pretrain_spec
from usjepa.errors import UsjepaError
from usjepa.io.runfolder import ENCODER, LATEST, RunFolder, resume_mode
from usjepa.models.checkpoint_io import export_encoder
from usjepa.models.sharding import full_tensors, localise_checkpoint
from usjepa.spec import plain
from usjepa.train.build import build_mask_collator, build_objective, effective_precision, holdout_split
from usjepa.train.checkpoint import FORMAT_VERSION, CheckpointWriter, load_training_checkpoint, rng_state
from usjepa.train.collectives import Collectives
from usjepa.train.distributed import DistEnv, init_distributed, resolve_env
from usjepa.train.mask_preview import record_masks
from usjepa.train.periodic import (
    METRIC_FIELDS,
    MetricsWriter,
    PeriodicCheckpointer,
    PeriodicProbe,
    StepInfo,
    StopCheck,
    TrainingLog,
    Validation,
)
from usjepa.train.placement import adamw_fused, check_world, place_models
from usjepa.train.resume import ResumePoint, find_resume_point, load_resume_state
from usjepa.train.sampler import ResumableBatchSampler, SeededItems, epoch_length, item_seed
from usjepa.train.schedules import optim_schedules
from usjepa.train.signals import StopFlag, ignore_stop_signals
from usjepa.train.step import apply_update, autocast_context, train_step

log = logging.getLogger(__name__)


class TrainingError(UsjepaError, RuntimeError):
    """The run cannot go on (diverged loss, bad data share...); the last good checkpoint is kept."""


@dataclass
class TrainResult:
    status: str  # completed | preempted
    step: int
    run_dir: Path
    best_val: float | None = None


def run_training(cfg: PretrainConfig | Any, should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train (or resume) the run described by `cfg` in `cfg.train.out_dir`.

    `cfg` is the typed spec (a merged DictConfig or a plain dict is checked and converted here, the entry point:
    nothing below reads OmegaConf).

    Without a `should_stop` hook, SIGTERM and SIGINT (Ctrl-C) stop the run at the next step boundary, after
    saving latest.pt; the same command resumes it.
    """
    cfg = pretrain_spec(cfg)
    env = resolve_env()
    started = env.world_size > 1 and not (dist.is_available() and dist.is_initialized())
    flag = StopFlag().install(signal.SIGTERM, signal.SIGINT) if should_stop is None else None
    try:
        init_distributed(env)
        return _Trainer(cfg, env, should_stop or flag).run()
    finally:
        if flag is not None:
            flag.restore()
        if started and dist.is_initialized():
            dist.destroy_process_group()


def _param_groups(modules: dict[str, torch.nn.Module]) -> list[dict]:
    decay, no_decay = [], []
    for mod in modules.values():
        for name, p in mod.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)  # as I-JEPA, V-JEPA, MAE
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]


class _Trainer:
    def __init__(self, cfg: PretrainConfig, env: DistEnv, should_stop: Callable[[], bool] | None):
        self.cfg, self.env, self.should_stop = cfg, env, should_stop
        check_world(cfg, env.world_size)
        self.main = env.rank == 0
        self.folder = RunFolder(cfg.train.out_dir)
        if torch.cuda.is_available():
            self.device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        else:
            self.device = torch.device("cpu")
        prec = cfg.train.precision
        self.amp = (prec == "bf16") or (prec == "auto" and self.device.type == "cuda")
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        self.coll = Collectives(env.world_size)
        self.step = self.total = 0
        self.best_val: float | None = None
        self.owns_folder = False  # True once this run's state is in the folder: failures are then recorded
        self._ckpt: dict | None = None
        self.large_run: dict = {}  # the effective activation checkpointing / sharding / compile (env.json)
        self.sharded = False  # train.sharding=fsdp: the student and predictor are FSDP2 shards (no DDP)
        self.ckpt = CheckpointWriter(self.folder, self._state, cfg.train.keep_last, self.main)

    # ------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        self.coll.run_on_main(self.folder.lock.acquire, self.main)  # FolderBusy on every rank when it is taken
        try:
            return self._run()
        except BaseException as e:
            self._record_failure(e)
            raise
        finally:
            if self.main:
                self.folder.lock.release()

    def _run(self) -> TrainResult:
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed % 2**32)
        point = self.coll.run_on_main(self._prepare_folder, self.main)
        self.owns_folder = True
        self._build()
        self._load(point)
        self._status("running")
        if self.main:
            self.folder.update_env(precision=effective_precision(self.objective, self.cfg, self.device, self.amp),
                                   numerics=numerics.describe(), large_run=self.large_run)
        if self.step >= self.total:
            self._finish(self.step)
            return TrainResult("completed", self.step, self.folder.path, self.best_val)
        return self._train(self.step)

    def _train(self, start: int) -> TrainResult:
        cfg, o = self.cfg, self.cfg.optim
        model = self._ddp()
        self.objective.train()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        batches = self._micro_batches(start)
        bar = tqdm(total=self.total, initial=start, disable=not (cfg.train.progress and self.main),
                   desc=cfg.objective.name, dynamic_ncols=True, mininterval=1.0)
        periodic = [TrainingLog(cfg.train.log_every, self.total, self.device, self._bad_count, bar),
                    self._validation(), PeriodicProbe(cfg.train.probe_every, self._probe)]
        write_row = MetricsWriter(self.folder if self.main else None)
        checkpoint = PeriodicCheckpointer(cfg.train.ckpt_every, self.total, self._checkpoint)
        stop = StopCheck(self.should_stop, self.coll, self.total)
        for step in range(start, self.total):
            lr, wd = self._set_schedules(step)
            micro, n_images = next(batches)
            loss_t, logs, gnorm = train_step(model, micro, params, o.clip_grad, self.amp, self.device,
                                             distributed=isinstance(model, DistributedDataParallel))
            del micro
            loss = float(self.coll.mean(loss_t))
            self._check_finite(loss, step + 1)
            apply_update(self.objective, self.optimizer, step + 1)
            self.step = done = step + 1
            info = StepInfo(done, step // self.steps_per_epoch, loss, lr, wd, gnorm,
                            n_images * self.env.world_size, logs)
            write_row(info, {k: v for chore in periodic for k, v in chore(info).items()})
            checkpoint(done)
            if stop(done):
                bar.close()
                return self._stop(done)
        bar.close()
        self._checkpoint(self.total, periodic=True)
        self._finish(self.total)
        return TrainResult("completed", self.total, self.folder.path, self.best_val)

    # ------------------------------------------------------------------ set-up
    def _prepare_folder(self) -> ResumePoint:
        """Rank 0, holding the lock: clean temp files, choose the resume point, check and write the config."""
        folder, cfg = self.folder, self.cfg
        folder.path.mkdir(parents=True, exist_ok=True)
        removed = folder.clean_temp_files()
        if removed:
            log.info("removed %d temp file(s) left by a killed writer: %s", len(removed),
                     ", ".join(p.name for p in removed[:5]))
        folder.metrics_path()  # a dangling metrics.csv link is refused before anything is written
        point, self._ckpt = find_resume_point(folder, resume_mode(cfg.train.resume))
        folder.write_config(cfg, baseline=point.config, at_step=point.step)
        dropped = folder.reset_metrics(METRIC_FIELDS, point.step)
        if point.path is not None:
            log.info("resuming %s from %s at step %d%s", folder.path, point.path.name, point.step,
                     f" ({dropped} metrics rows past it dropped)" if dropped else "")
        return point

    def _build(self) -> None:
        cfg = self.cfg
        self._data()
        self.epoch_items = epoch_length(self.dataset, self.train_idx, cfg.data.balance, cfg.data.balance_cap)
        per_epoch = self.epoch_items // cfg.data.batch_size
        if per_epoch < 1:
            raise ConfigError(
                f"data.batch_size={cfg.data.batch_size} is larger than the training set ({len(self.train_idx)} items)"
            )
        self.total = cfg.train.epochs * per_epoch if cfg.train.epochs > 0 else cfg.train.steps
        self.objective = build_objective(cfg, self.total).to(self.device)
        self.large_run = place_models(self.objective, cfg, self.device, self.env.world_size, self.amp)
        self.sharded = self.large_run["sharding"] == "fsdp"
        self.ckpt.collective = self.sharded  # every rank gathers the sharded state, rank 0 writes it
        self.collator = build_mask_collator(cfg, self.base_collate)
        if self.main:  # the run's effective masking, drawn as training draws it -> masks.json
            record_masks(cfg, self.collator, self.folder.path, self.env.world_size,
                         SeededItems(self.dataset, self.train_idx))
        o = cfg.optim
        groups = _param_groups(self.objective.trainable_modules())
        self.optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                           weight_decay=o.weight_decay, fused=adamw_fused(groups))
        self.lr_s, self.wd_s = optim_schedules(o, cfg.data.batch_size, self.total, per_epoch)

    def _load(self, point: ResumePoint) -> None:
        self.step = point.step
        self.ckpt.step = point.step
        self.best_val = point.best_val
        if point.path is None:
            return
        ckpt = self._ckpt if self._ckpt is not None else load_training_checkpoint(point.path)
        self._ckpt = None
        mods = {**self.objective.trainable_modules(), **self.objective.frozen_state()}
        ckpt = localise_checkpoint(ckpt, mods, self.optimizer)  # full tensors cut to this rank's shards
        load_resume_state(ckpt, point.path, mods, self.optimizer, self.cfg.objective.name)
        saved = (point.config or {}).get("train", {})
        if point.step < self.total and (saved.get("steps"), saved.get("epochs")) != (self.cfg.train.steps,
                                                                                    self.cfg.train.epochs):
            log.warning("the run's length changed on resume: the lr / wd schedules now follow a %d-step cosine "
                        "(lr at step %d: %.3g)", self.total, point.step, self.lr_s[point.step])

    def _data(self) -> None:
        from usjepa.data import build_dataset, collate_skip_bad

        cfg = self.cfg
        img = tuple(cfg.model.img_size)
        if cfg.teacher.cache and cfg.data.augment:
            raise ConfigError("teacher.cache holds targets of fixed views: set data.augment=false to train from it")
        ds = build_dataset(cfg.data, split="train", img_size=img, augment=cfg.data.augment, seed=cfg.data.seed)
        frac = cfg.train.val_fraction if cfg.train.val_every > 0 else 0.0
        patients = getattr(ds, "patient_ids", None)
        self.dataset = ds
        self.train_idx, self.val_idx = holdout_split(len(ds), patients, frac, cfg.train.seed)
        log.info("training on %d of %d items, %d held out for validation (train.val_fraction=%g)",
                 len(self.train_idx), len(ds), len(self.val_idx), frac)
        self.val_dataset = (
            build_dataset(cfg.data, split="train", img_size=img, augment=False, seed=cfg.data.seed)
            if len(self.val_idx) else None
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

    def _micro_batches(self, start_step: int) -> Iterator[tuple[list[dict], int]]:
        """(the micro-batches of one optimizer step on this rank's device, their image count), forever."""
        cfg = self.cfg
        sampler = ResumableBatchSampler(len(self.train_idx), cfg.data.batch_size, cfg.train.seed, self.env.rank,
                                        self.env.world_size, cfg.optim.accum_steps, self._weights(), start_step,
                                        epoch_items=self.epoch_items)
        self.steps_per_epoch = max(sampler.steps_per_epoch, 1)
        workers = cfg.data.num_workers
        loader = torch.utils.data.DataLoader(
            SeededItems(self.dataset, self.train_idx), batch_sampler=sampler, collate_fn=self.collator,
            num_workers=workers, pin_memory=self.device.type == "cuda", persistent_workers=False,
            prefetch_factor=4 if workers else None, worker_init_fn=ignore_stop_signals if workers else None,
        )
        it = iter(loader)
        while True:
            micro, n = [], 0
            for _ in range(cfg.optim.accum_steps):
                batch = next(it)
                while batch is None:  # every item of this micro-batch was bad: take the next one
                    if self.env.world_size > 1:
                        raise TrainingError("a whole micro-batch was unreadable on one rank; see the bad-item log")
                    batch = next(it)
                n += batch["image"].shape[0]
                micro.append(self._to_device(batch))
            yield micro, n

    def _to_device(self, batch: dict) -> dict:
        out = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        out["masks"] = [m.to(self.device) for m in batch["masks"]]
        return out

    def _ddp(self) -> torch.nn.Module:
        if not self.coll.active or self.sharded:  # FSDP reduces the gradients itself
            return self.objective
        return DistributedDataParallel(self.objective, broadcast_buffers=False,
                                       device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _validation(self) -> Validation:
        every = self.cfg.train.val_every if len(self.val_idx) else 0
        return Validation(every, self.total, self._val_loss, self._new_best, self.best_val)

    def _new_best(self, step: int, val: float) -> None:
        self.best_val = val
        self.ckpt.save_best(step)

    # ------------------------------------------------------------------ per step
    def _set_schedules(self, step: int) -> tuple[float, float]:
        lr, wd = float(self.lr_s[step]), float(self.wd_s[step])
        for g in self.optimizer.param_groups:
            g["lr"] = lr
            if g.get("apply_wd"):
                g["weight_decay"] = wd
        return lr, wd

    def _check_finite(self, loss: float, step: int) -> None:
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(
                f"loss became {loss} at step {step}; stopped, and '{self.folder / LATEST}' still holds the last "
                f"good state (step {self.ckpt.step}). Try a lower optim.lr, optim.clip_grad > 0, or "
                "train.precision=fp32, and check the data for broken images."
            )

    @torch.no_grad()
    def _val_loss(self) -> float:
        cfg, obj = self.cfg, self.objective
        obj.eval()
        items = SeededItems(self.val_dataset, self.val_idx)
        bs = max(1, cfg.data.batch_size // self.env.world_size)
        total, n = 0.0, 0
        for b in range(min(cfg.train.val_batches, math.ceil(len(items) / bs))):
            keys = [(i, item_seed(cfg.train.seed, -1, i)) for i in range(b * bs, min((b + 1) * bs, len(items)))]
            batch = self.collator([items[k] for k in keys])
            if batch is None:
                continue
            with autocast_context(self.device, self.amp):
                loss, _ = obj(self._to_device(batch))
            total += float(loss) * len(keys)
            n += len(keys)
        obj.train()
        return total / max(n, 1)

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

    # ------------------------------------------------------------------ state and bookkeeping
    def _state(self, step: int) -> dict:
        mods = {**self.objective.trainable_modules(), **self.objective.frozen_state()}
        return {
            "version": FORMAT_VERSION,
            "step": step,
            "objective": self.cfg.objective.name,
            **{k: full_tensors(m.state_dict()) for k, m in mods.items()},  # gathered when sharded
            "optimizer": full_tensors(self.optimizer.state_dict()),
            "rng": rng_state(),
            "config": plain(self.cfg),
            "best_val": self.best_val,
        }

    def _checkpoint(self, step: int, periodic: bool) -> None:
        self.ckpt.save(step, periodic)
        self._status("running")

    def _stop(self, step: int) -> TrainResult:
        self._checkpoint(step, periodic=False)
        reason = getattr(self.should_stop, "reason", None)
        self._status("preempted", stop_signal=reason)
        log.warning("stop requested%s: saved %s at step %d", f" ({reason})" if reason else "",
                    self.folder / LATEST, step)
        return TrainResult("preempted", step, self.folder.path, self.best_val)

    def _finish(self, step: int) -> None:
        state = full_tensors(self.objective.student.state_dict()) if self.sharded else None  # on every rank
        if self.main:
            export_encoder(self.objective.student, self.folder / ENCODER, plain(self.cfg.model), state=state)
        self._status("completed")

    def _status(self, state: str, **extra) -> None:
        if self.main:
            self.folder.write_status(state=state, step=self.step, total_steps=self.total, error=None,
                                     last_ckpt=self.ckpt.time, ckpt_step=self.ckpt.step or None,
                                     objective=self.cfg.objective.name, **extra)

    def _record_failure(self, e: BaseException) -> None:
        """status.json says failed, with the reason (never left at "running"); only for this run's own folder."""
        if not (self.main and self.owns_folder):
            return
        try:
            self.folder.write_status(state="failed", step=self.step, total_steps=self.total,
                                     error=f"{type(e).__name__}: {e}"[:2000], last_ckpt=self.ckpt.time,
                                     ckpt_step=self.ckpt.step or None, objective=self.cfg.objective.name)
        except Exception as w:  # the original error matters more than this one
            log.error("could not record the failure in %s: %s", self.folder / "status.json", w)

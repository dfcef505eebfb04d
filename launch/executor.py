"""submitit executors built from the `launch:` config section, and the sbatch script they would submit.

Every SLURM setting comes from the config (nothing about any cluster is hard-coded here);
`slurm_additional_parameters` passes any other `#SBATCH --key=value` straight through.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import SlurmExecutor

from launch.spec import CLUSTERS, NON_NEGATIVE, POSITIVE
from usjepa.errors import ConfigError

logger = logging.getLogger(__name__)

_STRING_OPTIONS = ("partition", "account", "qos", "constraint", "exclude")
_PLACEHOLDER = re.compile(r"<[^<>]+>")


def _get(launch: Any, key: str) -> Any:
    return launch[key] if isinstance(launch, Mapping) else getattr(launch, key)


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain dict / list (submitit pickles and shell-quotes them)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return value


def check_launch(launch: Any, cluster: str) -> None:
    """Range checks and left-over placeholders, phrased as `launch.<key>` errors."""
    if cluster not in CLUSTERS:
        raise ConfigError(f"cluster '{cluster}' is not one of {', '.join(CLUSTERS)} (launch.cluster or --cluster)")
    for key in POSITIVE:
        if int(_get(launch, key)) < 1:
            raise ConfigError(f"launch.{key}={_get(launch, key)} must be >= 1")
    for key in NON_NEGATIVE:
        if int(_get(launch, key)) < 0:
            raise ConfigError(f"launch.{key}={_get(launch, key)} must be >= 0")
    extra = _plain(_get(launch, "slurm_additional_parameters")) or {}
    values = {f"launch.{k}": _get(launch, k) for k in _STRING_OPTIONS}
    values.update({f"launch.slurm_additional_parameters.{k}": v for k, v in extra.items()})
    for key, value in values.items():
        if isinstance(value, str) and _PLACEHOLDER.search(value):
            raise ConfigError(f"{key}='{value}' is still a placeholder: set it to your cluster's value "
                              "(ask your admins or run `sinfo -s` / `sacctmgr show assoc user=$USER`)")
    if cluster == "local" and int(_get(launch, "nodes")) > 1:
        raise ConfigError(f"launch.nodes={_get(launch, 'nodes')} needs SLURM: the local executor runs one node; "
                          "use --cluster slurm or launch.nodes=1")
    if int(_get(launch, "gpus_per_node")) and int(_get(launch, "tasks_per_node")) != int(_get(launch, "gpus_per_node")):
        logger.warning("launch.tasks_per_node=%s differs from launch.gpus_per_node=%s: usually one task per GPU",
                       _get(launch, "tasks_per_node"), _get(launch, "gpus_per_node"))


def slurm_parameters(launch: Any, job_name: str) -> dict[str, Any]:
    """`SlurmExecutor.update_parameters` keywords for a `launch:` section (empty settings are left out)."""
    params: dict[str, Any] = {
        "job_name": job_name,
        "nodes": int(_get(launch, "nodes")),
        "ntasks_per_node": int(_get(launch, "tasks_per_node")),
        "cpus_per_task": int(_get(launch, "cpus_per_task")),
        "time": int(_get(launch, "time")),
        "signal_delay_s": int(_get(launch, "signal_delay_s")),
        "array_parallelism": int(_get(launch, "array_parallelism")),
    }
    for key in _STRING_OPTIONS:
        if _get(launch, key):
            params[key] = str(_get(launch, key))
    if int(_get(launch, "gpus_per_node")) > 0:
        params["gpus_per_node"] = int(_get(launch, "gpus_per_node"))
    if int(_get(launch, "mem_gb")) > 0:
        params["mem"] = f"{int(_get(launch, 'mem_gb'))}GB"
    setup = _plain(_get(launch, "setup")) if _has(launch, "setup") else None
    if setup:
        params["setup"] = [str(line) for line in setup]
    extra = _plain(_get(launch, "slurm_additional_parameters"))
    if extra:
        params["additional_parameters"] = dict(extra)
    return params


def _has(launch: Any, key: str) -> bool:
    return key in launch if isinstance(launch, Mapping) else hasattr(launch, key)


def make_executor(launch: Any, folder: str | Path, cluster: str, job_name: str) -> submitit.Executor:
    """A submitit executor for `cluster` (slurm | local) whose logs and pickles go to `folder`.

    The cluster is always named explicitly: submitit's AutoExecutor would pick SLURM whenever `srun` exists.
    `debug` has no executor: the submit functions call the job in this process (submitit's DebugExecutor
    would open pdb on an error).
    """
    check_launch(launch, cluster)
    max_requeues = int(_get(launch, "max_requeues"))
    if cluster == "slurm":
        if shutil.which("sbatch") is None:
            raise ConfigError("--cluster slurm, but `sbatch` is not on PATH: submit from a SLURM login node, "
                              "or use --cluster local (this machine) or --cluster debug (this process)")
        executor = SlurmExecutor(folder=folder, max_num_timeout=max_requeues)
        executor.update_parameters(**slurm_parameters(launch, job_name))
        return executor
    if cluster == "local":
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=max_requeues)
        executor.update_parameters(
            timeout_min=int(_get(launch, "time")),
            tasks_per_node=int(_get(launch, "tasks_per_node")),
            gpus_per_node=int(_get(launch, "gpus_per_node")),
            signal_delay_s=int(_get(launch, "signal_delay_s")),
            nodes=1,
        )
        return executor
    raise ValueError(f"no submitit executor for cluster '{cluster}': debug runs in this process")


class InProcessJob:
    """`--cluster debug`: the job runs in this process, when its result is first asked for."""

    def __init__(self, fn: Any, job_id: str) -> None:
        self._fn, self.job_id = fn, job_id
        self._done, self._result = False, None
        self.state = "PENDING"

    def result(self) -> Any:
        if not self._done:
            try:
                self._result = self._fn()
                self.state = "COMPLETED"
            except BaseException:
                self.state = "FAILED"
                raise
            finally:
                self._done = True
        return self._result

    def done(self, force_check: bool = False) -> bool:
        return self._done


class _RenderingSlurmExecutor(SlurmExecutor):
    """A SlurmExecutor that only renders scripts, so `--dry-run` works on machines without SLURM."""

    @classmethod
    def affinity(cls) -> int:
        return 1

    def _submit_command(self, command: str):  # pragma: no cover - guarded: rendering only
        raise RuntimeError("this executor only renders sbatch scripts (dry run)")


def render_sbatch(launch: Any, folder: str | Path, job_name: str, array_size: int | None = None) -> str:
    """The sbatch script submitit would submit for this `launch:` section (a job array when array_size > 1)."""
    check_launch(launch, "slurm")
    executor = _RenderingSlurmExecutor(folder=folder, max_num_timeout=int(_get(launch, "max_requeues")))
    executor.update_parameters(**slurm_parameters(launch, job_name))
    if array_size and array_size > 1:
        executor.parameters["map_count"] = int(array_size)  # how submitit itself marks an array submission
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")


def job_name_for(run_dir: Path) -> str:
    """A readable SLURM job name from the run folder (`usjepa-<folder>`, shell-safe, at most 64 chars)."""
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", Path(run_dir).name) or "run"
    return f"usjepa-{name}"[:64]

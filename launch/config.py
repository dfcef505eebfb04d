"""The `launch:` config section: how a job reaches a cluster. Nothing about any particular cluster is hard-coded."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LaunchConfig:
    cluster: str = "local"  # local | slurm | debug
    partition: str = ""
    account: str = ""
    qos: str = ""
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    cpus_per_task: int = 2
    mem_gb: int = 0
    time: int = 60  # minutes
    constraint: str = ""
    exclude: str = ""
    signal_delay_s: int = 120
    max_requeues: int = 5
    array_parallelism: int = 32
    slurm_additional_parameters: dict = field(default_factory=dict)  # any other `#SBATCH --key=value`
    setup: list[str] = field(default_factory=list)  # shell lines run in the sbatch script before srun
    job_name: str = ""  # SLURM job name; empty: usjepa-<run folder name>

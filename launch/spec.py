"""The `launch:` config section: how a job reaches a cluster. Nothing about any particular cluster is hard-coded."""

from __future__ import annotations

from dataclasses import dataclass, field

from usjepa.spec import Spec, at_least, choice

CLUSTERS = ("slurm", "local", "debug")  # launch.cluster: where `usjepa launch` sends the job
POSITIVE = ("nodes", "tasks_per_node", "cpus_per_task", "time", "array_parallelism")
NON_NEGATIVE = ("gpus_per_node", "mem_gb", "signal_delay_s", "max_requeues")


@dataclass
class LaunchConfig(Spec):
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

    def check(self) -> None:
        choice(self.cluster, CLUSTERS, "cluster")
        for name in POSITIVE:
            at_least(getattr(self, name), 1, name)
        for name in NON_NEGATIVE:
            at_least(getattr(self, name), 0, name)

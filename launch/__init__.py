"""Getting runs onto machines: submitit executors (SLURM, local, in-process), sweeps as SLURM job arrays,
preemption-safe requeue, and `usjepa status`. The training loop knows nothing of this package."""

"""Arguments and handlers of `usjepa submit`, `usjepa sweep` and `usjepa status` (usjepa/cli.py wires them)."""

from __future__ import annotations

import argparse
import sys

from launch.executor import CLUSTERS

_CLUSTER_HELP = ("where to run: slurm (sbatch), local (a background process on this machine) or debug "
                 "(in this process); default: the config's launch.cluster")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", choices=CLUSTERS, default=None, help=_CLUSTER_HELP)
    parser.add_argument("--launch", dest="launch_file", default=None, metavar="YAML",
                        help="a launch preset (a `launch:` mapping, see configs/launch/) merged under the overrides")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the sbatch script and the run folder(s); submit nothing")
    parser.add_argument("--wait", action="store_true", help="block until the job(s) finish")


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """`usjepa submit CONFIG [k=v ...] [--cluster slurm|local|debug] [--dry-run] [--wait]`."""
    parser.add_argument("config", help="YAML config file (e.g. configs/pretrain/salt_vit_tiny_sim.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. launch.nodes=2 train.steps=1000")
    _common(parser)


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """`usjepa sweep SWEEP.yaml [k=v ...] [--cluster ...] [--dry-run] [--wait]`."""
    parser.add_argument("sweep", help="sweep YAML: base config + grid or runs (see configs/sweep/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides applied to every member")
    _common(parser)


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    """`usjepa status DIR [--watch [SECONDS]] [--no-slurm]`."""
    parser.add_argument("dir", help="a run folder (train.out_dir) or a sweep folder")
    parser.add_argument("--watch", nargs="?", type=float, const=10.0, default=None, metavar="SECONDS",
                        help="refresh every SECONDS (default 10) until Ctrl-C")
    parser.add_argument("--no-slurm", action="store_true", help="read states from the folders only")
    parser.add_argument("--csv", default=None, metavar="FILE", help="also write the table as CSV")


def _finish(sub, wait: bool) -> int:
    """Run debug jobs (in this process) and, with --wait, block on the others.

    Exit status 1 when a run folder does not say `completed` afterwards (its status.json is the truth:
    a scheduler's state says nothing about what the training reached)."""
    from launch.runfiles import STATUS_FILE, read_json
    from launch.submit import wait_for

    if sub.cluster == "debug":
        for job in sub.jobs:
            job.result()
    elif wait and sub.jobs:
        states = wait_for(sub.jobs)
        print("final job states: " + ", ".join(f"{j.job_id}={s}" for j, s in zip(sub.jobs, states)))
    else:
        return 0
    unfinished = [(d, (read_json(d / STATUS_FILE) or {}).get("state", "no status.json")) for d in sub.run_dirs]
    unfinished = [(d, state) for d, state in unfinished if state != "completed"]
    for d, state in unfinished:
        print(f"not completed ({state}): {d}", file=sys.stderr)
    return 1 if unfinished else 0


def run_submit(args: argparse.Namespace) -> int:
    from launch.submit import resolve_run_config, submit_run

    cfg = resolve_run_config(args.config, args.overrides, args.launch_file)
    sub = submit_run(cfg, cluster=args.cluster, dry_run=args.dry_run)
    run_dir = sub.run_dirs[0]
    if args.dry_run:
        if sub.script is not None:
            print(sub.script)
        else:
            la = cfg.launch
            print(f"# would run on cluster '{sub.cluster}': {la.tasks_per_node} task(s), {la.time} min limit")
        print(f"# run folder: {run_dir}")
        return 0
    print(f"submitted {sub.cluster} job {sub.job_ids[0]}\nrun folder: {run_dir}\n"
          f"follow it with: usjepa status {run_dir}")
    return _finish(sub, args.wait)


def run_sweep(args: argparse.Namespace) -> int:
    from launch.sweep import load_sweep, submit_sweep

    spec = load_sweep(args.sweep)
    sub, plan = submit_sweep(spec, cluster=args.cluster, dry_run=args.dry_run, extra_overrides=args.overrides,
                             launch_file=args.launch_file)
    for m, why in plan.skipped:
        print(f"skip {m.name}: {why}")
    if args.dry_run:
        if sub.script is not None:
            print(sub.script)
        for d in sub.run_dirs:
            print(f"# member run folder: {d}")
        print(f"# sweep folder: {spec.out_dir}")
        return 0
    if not sub.jobs:
        print(f"nothing to submit: every member of '{spec.name}' is completed or still queued ({spec.out_dir})")
        return 0
    ids = sorted({j.job_id.split("_")[0] for j in sub.jobs})
    print(f"submitted {len(sub.jobs)} member(s) of sweep '{spec.name}' on {sub.cluster} "
          f"(job{'s' if len(ids) > 1 else ''} {', '.join(ids)})\nsweep folder: {spec.out_dir}\n"
          f"follow it with: usjepa status {spec.out_dir}")
    return _finish(sub, args.wait)


def run_status(args: argparse.Namespace) -> int:
    from launch.status import collect_status, format_status, watch

    try:
        if args.watch is not None:
            watch(args.dir, args.watch, query_slurm=not args.no_slurm)
            return 0
        df = collect_status(args.dir, query_slurm=not args.no_slurm)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_status(df))
    if args.csv:
        df.to_csv(args.csv, index=False)
    return 0

"""Arguments and handlers of `usjepa submit`, `sweep`, `status`, `cancel` and `resubmit` (usjepa/cli.py wires them).

Errors are raised, not printed: the `usjepa` entry point prints every expected failure as one `error:` line.
"""

from __future__ import annotations

import argparse
import sys

from launch.spec import CLUSTERS

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
    """`usjepa submit CONFIG [k=v ...] [--cluster slurm|local|debug] [--dry-run] [--wait] [--force]`."""
    parser.add_argument("config", help="YAML config file (e.g. configs/pretrain/salt_vit_tiny_sim.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. launch.nodes=2 train.steps=1000")
    _common(parser)
    parser.add_argument("--force", action="store_true",
                        help="submit even when the run folder already completed this config")


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """`usjepa sweep SWEEP.yaml [k=v ...] [--cluster ...] [--dry-run] [--wait]`."""
    parser.add_argument("sweep", help="sweep YAML: base config + grid or runs (see configs/sweep/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides applied to every member")
    _common(parser)
    parser.add_argument("--failed-only", action="store_true",
                        help="submit only members that ran and ended without completing (not the never-submitted)")


def add_cancel_arguments(parser: argparse.ArgumentParser) -> None:
    """`usjepa cancel DIR [--dry-run]`."""
    parser.add_argument("dir", help="a run folder or a sweep folder (every member's job is cancelled)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be cancelled; cancel nothing")


def add_resubmit_arguments(parser: argparse.ArgumentParser) -> None:
    """`usjepa resubmit DIR [--cluster ...] [--dry-run] [--wait]`."""
    parser.add_argument("dir", help="a run folder or a sweep folder")
    parser.add_argument("--cluster", choices=CLUSTERS, default=None, help=_CLUSTER_HELP)
    parser.add_argument("--dry-run", action="store_true", help="list the runs and print the sbatch script only")
    parser.add_argument("--wait", action="store_true", help="block until the job(s) finish")


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
    sub = submit_run(cfg, cluster=args.cluster, dry_run=args.dry_run, force=args.force)
    run_dir = sub.run_dirs[0]
    if sub.completed:
        print(f"nothing submitted: '{run_dir}' is already {sub.completed}. Raise train.steps to extend it, use a new "
              "train.out_dir, or pass --force")
        return 0
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
                             launch_file=args.launch_file, failed_only=args.failed_only)
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

    if args.watch is not None:
        watch(args.dir, args.watch, query_slurm=not args.no_slurm)
        return 0
    df = collect_status(args.dir, query_slurm=not args.no_slurm)
    print(format_status(df))
    if args.csv:
        df.to_csv(args.csv, index=False)
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    from launch.control import cancel

    outcomes = cancel(args.dir, dry_run=args.dry_run)
    if not outcomes:
        print(f"no runs under '{args.dir}'")
    verb = "would cancel" if args.dry_run else "cancelled"
    for o in outcomes:
        job = f" (job {o.job_id})" if o.job_id else ""
        if o.action == "skipped":
            print(f"left alone{job}: {o.run}: {o.detail}")
        else:
            print(f"{verb}{job} [{o.action}]: {o.run}")
    return 0


def run_resubmit(args: argparse.Namespace) -> int:
    from launch.resubmit import resubmit

    sub, plan = resubmit(args.dir, cluster=args.cluster, dry_run=args.dry_run)
    for run, why in plan.skipped:
        print(f"skip {run}: {why}")
    if not plan.to_submit:
        print(f"nothing to resubmit under '{args.dir}'")
        return 0
    for run, state in plan.to_submit:
        print(f"{'would resubmit' if args.dry_run else 'resubmit'} ({state}): {run}")
    if args.dry_run:
        if sub.script is not None:
            print(sub.script)
        return 0
    print(f"submitted {len(sub.jobs)} job(s) on {sub.cluster}: {', '.join(sub.job_ids)}\n"
          f"follow them with: usjepa status {args.dir}")
    return _finish(sub, args.wait)

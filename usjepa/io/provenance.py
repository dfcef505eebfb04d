"""What a run records about the code that ran it: the git commit and dirty diff, and package versions."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path


def git_info(repo_dir: str | Path | None = None) -> dict:
    """Commit and dirty diff of the source tree that runs (empty when not a git checkout)."""
    repo_dir = Path(repo_dir or Path(__file__).resolve().parents[2])

    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = run("rev-parse", "HEAD").strip()
    return {"commit": commit, "dirty_diff": run("diff", "HEAD") if commit else ""}


def package_versions() -> dict:
    """Python, platform and the versions of the packages a run depends on (None where not installed)."""
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("usjepa", "torch", "torchvision", "timm", "xformers", "submitit", "omegaconf", "numpy", "pandas"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out

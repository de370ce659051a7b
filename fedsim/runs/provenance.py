"""Provenance of a run: the versions it ran with and the git commit of the checkout holding fedsim."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import numpy as np

from fedsim import __version__


def git_commit(path: Path | None = None) -> dict:
    """The git commit (and whether the work tree has changes) of the checkout holding fedsim, if any."""
    root = Path(__file__).resolve().parents[1] if path is None else Path(path)
    if not (root / ".git").exists():
        return {}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return {}
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    info = {"git_commit": commit.stdout.strip()}
    if status.returncode == 0:
        info["git_dirty"] = bool(status.stdout.strip())
    return info


def environment() -> dict:
    """Versions of fedsim, Python, NumPy, Numba and the platform."""
    import numba
    return {"fedsim": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "platform": platform.platform()}


__all__ = ["environment", "git_commit"]

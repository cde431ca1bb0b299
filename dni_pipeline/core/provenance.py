"""Where a result came from: the commit of the code that ran (and whether the tree had uncommitted changes), the
command, the versions and the host, so a table in the docs can be traced to the code and machine that made it."""

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["provenance", "provenance_line"]

_ROOT = Path(__file__).resolve().parents[2]  # the checkout an editable install runs from


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.rstrip("\n") if out.returncode == 0 else None  # porcelain lines start with a space


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance() -> dict:
    """The commit (None outside a git checkout), the files changed against it, the command line, the versions of
    Python, torch and Ray, and the host's CPUs and load average now."""
    # Only this checkout's own repository: an installed copy inside some other repository has no commit of ours.
    inside = _git("rev-parse", "--show-toplevel") == str(_ROOT)
    commit = _git("rev-parse", "HEAD") if inside else None
    changed = (_git("status", "--porcelain") or "").splitlines() if commit else []
    return {"commit": commit, "dirty": bool(changed) if commit else None, "changed_files": [c[3:] for c in changed],
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]], "python": platform.python_version(),
            "torch": _version("torch"), "ray": _version("ray"), "host": platform.node(), "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def provenance_line(record: dict) -> str:
    """One sentence for a results table: the commit, clean or not, and how busy the host was."""
    commit = "no git commit" if record["commit"] is None else f"commit {record['commit'][:10]}" + (
        " with uncommitted changes to " + ", ".join(record["changed_files"][:5]) if record["dirty"] else " (clean tree)")
    busy = record.get("host_cpu_busy")
    load = f"host CPUs {100 * busy:.0f}% busy over the run" if busy is not None else "host load unknown"
    parts = record.get("parts", [])
    resumed = "" if len(parts) < 2 else (f" Resumed: {record['resumed_runs']} runs from earlier parts, the first at "
                                         f"commit {str(parts[0]['commit'])[:10]} (provenance.json lists each part).")
    return (f"Provenance: {commit}; {record['cpus']} CPUs, {load}, load average {record['load_average'][0]:g} at the "
            f"start.{resumed}")

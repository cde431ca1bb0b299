"""How busy this machine's cores were while something ran: the check that a run on emulated devices
measured its schedule and not its host (a host near 1.0 busy is what paced the run)."""

from pathlib import Path

__all__ = ["CpuBusy"]

_STAT = Path("/proc/stat")


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all cores since boot, or None where /proc/stat is not there (not Linux)."""
    try:
        fields = [float(v) for v in _STAT.read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, sum(fields)


class CpuBusy:
    """The busy share of all this node's cores over the spans it was entered for (every process's work)."""

    def __init__(self):
        self.busy = self.total = 0.0
        self._start: tuple[float, float] | None = None

    def __enter__(self) -> "CpuBusy":
        self._start = _cpu_times()
        return self

    def __exit__(self, *exc) -> None:
        end = _cpu_times()
        if self._start and end:
            self.busy += end[0] - self._start[0]
            self.total += end[1] - self._start[1]

    @property
    def share(self) -> float | None:
        return round(self.busy / self.total, 4) if self.total else None

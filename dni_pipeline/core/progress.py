"""Progress of a job running inside a Ray task: a bar where the driver draws to a terminal, and
otherwise a log line at most every few seconds (a redrawn bar floods a log file with its frames)."""

import logging
import time

__all__ = ["LineProgress", "task_progress"]

log = logging.getLogger("dni_pipeline.core")

LINE_SECONDS = 10.0


class LineProgress:
    """The part of tqdm's interface the jobs use (n, update, set_description, close), as log lines."""

    def __init__(self, desc: str = "", total: int | None = None, unit: str = "it", every: float = LINE_SECONDS):
        self.desc, self.total, self.unit, self.every = desc, total, unit, every
        self.n, self.start, self.last = 0, time.monotonic(), float("-inf")

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.every:
            self._line()

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def close(self) -> None:
        self._line()

    def _line(self) -> None:
        self.last = time.monotonic()
        of = f"/{self.total}" if self.total else ""
        log.info("%s: %d%s %s, %.0f s", self.desc, self.n, of, self.unit, self.last - self.start)


def task_progress(interactive: bool):
    """The progress class a task should use: tqdm_ray's bars when the driver's stderr is a terminal."""
    if interactive:
        from ray.experimental.tqdm_ray import tqdm  # drawn by the driver

        return tqdm
    return LineProgress

"""The bench's journal of finished runs (`cells.jsonl` in its folder), so a killed bench resumes where it stopped.

A headline bench is hours of runs and writes its tables only at the end; each run is appended here the moment it
finishes, with what the tables and plots read of it, and `--resume` takes them back instead of running them again.
The first line is the bench's resolved config and provenance: a resume under other settings is refused, not mixed
in; one under another commit is logged, and each part's provenance kept (`parts` in provenance.json).
"""

import json
import logging
import os
from pathlib import Path

from dni_pipeline.core.errors import UserError
from dni_pipeline.core.files import atomic_path
from dni_pipeline.core.run_folder import RunFolder

from .report import TrainResult

__all__ = ["BenchJournal", "bench_folder"]

log = logging.getLogger("dni_pipeline.trainer")

JOURNAL = "cells.jsonl"
FINISHED = "bench.md"  # written last: a folder holding it is a finished bench
MAY_CHANGE = ("data_dir", "address", "out")  # where a resumed bench finds its data, cluster and folder; nothing else


def bench_folder(path: str, config: dict, resume: bool) -> RunFolder:
    """A new bench's folder, or with `resume` the folder of an unfinished one run under the same `config`
    (BenchConfig.resolved()): checked before any work."""
    if not resume:
        return RunFolder(path)
    folder = RunFolder.submitted(path)
    if folder.file(FINISHED).is_file():
        raise UserError(f"{path} holds a finished bench ({FINISHED}): nothing to resume; give a new --out")
    if not folder.file(JOURNAL).is_file():
        raise UserError(f"nothing to resume in {path} (no {JOURNAL}): check the --out path, or drop --resume")
    _check_same(folder, _records(folder.file(JOURNAL))[0]["config"], config)
    return folder


def _records(path: Path) -> list[dict]:
    with path.open() as lines:
        return [json.loads(line) for line in lines if line.endswith("\n")]  # a line cut by a kill is dropped


def _check_same(folder: RunFolder, journalled: dict, config: dict) -> None:
    changed = _differing(journalled, json.loads(json.dumps(config)))  # compared as it reads back: tuples as lists
    if changed:
        raise UserError(f"--resume: the bench in {folder.path} ran with another {changed}: give the flags it ran "
                        "with, or a new --out")


def _key(phase: str, rep: int, latency: float, stages: int, label: str) -> str:
    return f"{phase} {rep} {latency:g} {stages} {label}"


def _differing(old, new, path: str = "") -> str | None:
    """The first setting (dotted name) in which two resolved configs differ, other than MAY_CHANGE."""
    if isinstance(old, dict) and isinstance(new, dict):
        for name in sorted(set(old) | set(new)):
            if name not in MAY_CHANGE:
                found = _differing(old.get(name), new.get(name), f"{path}{name}.")
                if found:
                    return found
        return None
    return None if old == new else path.rstrip(".")


class BenchJournal:
    """Every finished run of one bench, by (phase, repetition, latency, K, row)."""

    def __init__(self, folder: RunFolder, config: dict, provenance: dict, resume: bool):
        """`provenance`: this part's record (commit, tree, host); `parts` lists every part's, the first first."""
        self.path: Path = folder.file(JOURNAL)
        self.done: dict[str, TrainResult] = {}
        if not resume:
            self.parts = [provenance]
            self._rewrite([{"config": config, "parts": self.parts}])
            return
        header, *runs = _records(self.path)
        _check_same(folder, header["config"], config)
        self.parts = [*header["parts"], provenance]
        if provenance.get("commit") != header["parts"][0].get("commit"):
            log.warning("resuming a bench begun at commit %s under commit %s: its table mixes the two (provenance.json "
                        "lists each part's)", header["parts"][0].get("commit"), provenance.get("commit"))
        self.done = {r["key"]: TrainResult(r["summary"], steps=r["steps"], evals=r["evals"], events=r["events"])
                     for r in runs}
        self._rewrite([{**header, "parts": self.parts}, *runs])  # without a cut last line, before appending after it

    def _rewrite(self, records: list[dict]) -> None:
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records))

    def get(self, phase: str, rep: int, latency: float, stages: int, label: str) -> TrainResult | None:
        """The run journalled under this cell, or None when it still has to run."""
        return self.done.get(_key(phase, rep, latency, stages, label))

    def add(self, phase: str, rep: int, latency: float, stages: int, label: str, result: TrainResult,
            keep_events: bool) -> None:
        """Append a finished run: its summary and evaluations, its SG-probed steps (the cosine plot's), and its
        stage events where `keep_events` (the timeline plots' runs only: they are large)."""
        record = {"key": _key(phase, rep, latency, stages, label), "summary": result.summary, "evals": result.evals,
                  "steps": [s for s in result.steps if "sg_cosine" in s], "events": result.events if keep_events else []}
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")
            out.flush()
            os.fsync(out.fileno())

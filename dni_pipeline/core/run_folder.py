"""A run's output folder, the one owner of its files' names and formats: `config.json`,
`summary.json`, `metrics.jsonl`, the checkpoint (`checkpoint.pt`, or `checkpoint.json`, the manifest
of a checkpoint kept in several files), and what resuming needs: finding them, and trimming the
metrics back to the checkpoint."""

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

from .configs import from_dict
from .errors import UserError
from .files import atomic_path, write_json_atomic
from .provenance import provenance

__all__ = ["RunFolder"]


class RunFolder:
    """Checked before any work and created when the work starts; an existing run's folder (to resume or
    read) must hold its checkpoint."""

    CONFIG = "config.json"
    SUMMARY = "summary.json"
    PROVENANCE = "provenance.json"
    METRICS = "metrics.jsonl"
    CHECKPOINT = "checkpoint.pt"
    MANIFEST = "checkpoint.json"
    MANIFEST_FORMAT = 1

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._check_new()

    @classmethod
    def existing(cls, path: str | Path, checkpoint: str = CHECKPOINT) -> "RunFolder":
        """The folder of an earlier run, which must hold `checkpoint` (CHECKPOINT or MANIFEST)."""
        folder = cls.submitted(path)
        if not folder.file(checkpoint).is_file():
            raise UserError(f"nothing to resume in {folder.path} (no {checkpoint}): check the run folder path")
        return folder

    @classmethod
    def submitted(cls, path: str | Path) -> "RunFolder":
        """The folder of a run already submitted: its checks were made by the submitter, before any work."""
        folder = cls.__new__(cls)
        folder.path = Path(path)
        return folder

    def _check_new(self) -> None:
        if self.path.exists():
            if not self.path.is_dir():
                raise UserError(f"--out {self.path} is a file: choose a folder path")
            if any(self.path.iterdir()):
                raise UserError(f"--out {self.path} already holds files: choose a new folder so no result is overwritten")
        ancestor = self.path
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise UserError(f"--out {self.path} cannot be created ({ancestor} is not a writable folder): choose another path")

    def create(self) -> "RunFolder":
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--out {self.path} cannot be created ({exc.strerror}): choose another path") from None
        return self

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoint(self) -> Path:
        return self.file(self.CHECKPOINT)

    def write_json(self, name: str, obj) -> None:
        write_json_atomic(self.file(name), obj)

    # -- config and summary ------------------------------------------------------------------------
    def write_config(self, cfg) -> None:
        self.write_json(self.CONFIG, dataclasses.asdict(cfg))

    def read_config(self, cls):
        """The run's config, as the dataclass `cls` it was written from."""
        try:
            return from_dict(cls, json.loads(self.file(self.CONFIG).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise UserError(f"{self.file(self.CONFIG)} cannot be read as a run config ({exc}): check the run folder") from None

    def write_summary(self, summary: dict) -> None:
        """summary.json, and beside it provenance.json: the commit, tree state, command and host it came from."""
        self.write_json(self.SUMMARY, summary)
        self.write_json(self.PROVENANCE, provenance())

    def read_summary(self) -> dict:
        return json.loads(self.file(self.SUMMARY).read_text())

    # -- metrics -----------------------------------------------------------------------------------
    def append_metrics(self, records: list[dict]) -> None:
        """Append records in one write, the file closed after it: a killed run keeps what it logged."""
        with open(self.file(self.METRICS), "a") as f:
            f.write("".join(json.dumps(record) + "\n" for record in records))

    def read_metrics(self) -> list[dict]:
        """The logged records, without a last line that a killed writer left unfinished."""
        path = self.file(self.METRICS)
        lines = path.read_text().splitlines() if path.exists() else []
        records = []
        for number, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise UserError(f"{path}:{number} is not a JSON record: the file was damaged") from None
        return records

    def trim_metrics(self, keep: Callable[[dict], bool]) -> list[dict]:
        """Keep only the records `keep` accepts (on resume, what came after the checkpoint is redone); return them."""
        kept = [record for record in self.read_metrics() if keep(record)]
        if self.file(self.METRICS).exists():
            with atomic_path(self.file(self.METRICS)) as tmp:
                tmp.write_text("".join(json.dumps(record) + "\n" for record in kept))
        return kept

    # -- a checkpoint kept in several files --------------------------------------------------------
    def write_manifest(self, manifest: dict) -> None:
        """The manifest names a consistent set of checkpoint files; written only once all of them are."""
        self.write_json(self.MANIFEST, {"format": self.MANIFEST_FORMAT, **manifest})

    def read_manifest(self) -> dict:
        path = self.file(self.MANIFEST)
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{path} cannot be read ({exc}): it is not the manifest of a dni-pipeline run") from None
        if not isinstance(manifest, dict) or manifest.get("format") != self.MANIFEST_FORMAT:
            raise UserError(f"{path} is not the manifest of a dni-pipeline run (format {self.MANIFEST_FORMAT})")
        return manifest

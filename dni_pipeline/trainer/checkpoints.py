"""Stage checkpoints on storage every node can reach (a path or an fsspec URI).

Each stage writes its own file; the driver writes the manifest (RunFolder.write_manifest) only once
every stage of a step has written, so the manifest always names a consistent set. Files are
written beside their final name and moved onto it, so an interrupted write never replaces a good file,
and they load with ``torch.load(weights_only=True)`` after their sha256 is checked: nothing is unpickled.
"""

import hashlib
import io
import uuid
from pathlib import Path

import fsspec  # comes with torch; local paths, file:// and, with s3fs / gcsfs installed, s3:// and gs://
import torch

from dni_pipeline.core.errors import UserError

__all__ = ["CheckpointStore"]


class CheckpointStore:
    """A folder of checkpoint files, named by a local path or a URI."""

    def __init__(self, uri: str):
        self.uri = uri
        try:
            self.fs, self.root = fsspec.core.url_to_fs(uri)
            self.fs.makedirs(self.root, exist_ok=True)
        except (ImportError, ValueError) as exc:
            raise UserError(f"checkpoint_dir {uri} cannot be used ({exc}): give a path every node can reach, "
                            "or install the filesystem package its scheme needs (s3fs, gcsfs)") from None
        except OSError as exc:
            raise UserError(f"checkpoint_dir {uri} cannot be created ({exc}): choose another path") from None

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def save(self, name: str, state: dict) -> str:
        """Write `state` as `name` (temporary file, then moved onto the name); return its sha256."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        tmp = self.path(f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, self.path(name))
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
        return hashlib.sha256(data).hexdigest()

    def load(self, name: str, sha256: str | None = None) -> dict:
        """Read `name`, refusing a file whose sha256 differs from the one recorded when it was written."""
        with self.fs.open(self.path(name), "rb") as f:
            data = f.read()
        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            raise UserError(f"checkpoint {self.path(name)} does not match its recorded sha256 (truncated or "
                            "overwritten): it cannot be loaded")
        return torch.load(io.BytesIO(data), weights_only=True)

    def names(self, prefix: str) -> list[str]:
        """Names of the finished files starting with `prefix`, sorted."""
        if not self.fs.exists(self.root):
            return []
        names = (Path(p).name for p in self.fs.ls(self.root, detail=False))
        return sorted(n for n in names if n.startswith(prefix))

    def exists(self, name: str) -> bool:
        return self.fs.exists(self.path(name))

    def remove(self, name: str) -> None:
        if self.exists(name):
            self.fs.rm(self.path(name))

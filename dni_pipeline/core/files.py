"""Files that are never seen half-written: atomic replacement, JSON written that way, and downloads
that appear only once verified."""

import contextlib
import json
import logging
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import UserError

__all__ = ["atomic_path", "fetch_verified", "write_json_atomic"]

log = logging.getLogger("dni_pipeline.core")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` only if the block succeeds,
    so readers never see half a file and a crash leaves the previous file in place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_json_atomic(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def fetch_verified(urls: list[str], final: Path, verify: Callable[[Path], None]) -> None:
    """Download `final` from the first of `urls` whose file passes `verify` (which raises UserError
    on a bad file); the file appears only once verified, and a failed download leaves nothing."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for url in urls:
        log.info("downloading %s", url)
        try:
            with atomic_path(final) as tmp:
                with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as src:
                    shutil.copyfileobj(src, out)
                verify(tmp)
            return
        except (OSError, UserError) as exc:
            log.warning("download of %s failed: %s", url, exc)
    raise UserError(f"could not download {final.name} from any mirror: check the network or copy the file to {final}")

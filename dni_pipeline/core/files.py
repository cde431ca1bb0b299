"""Files that are never seen half-written: atomic replacement, JSON written that way, and downloads
that appear only once verified."""

import contextlib
import http.client
import json
import logging
import os
import sys
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
                    _copy_with_bar(src, out, final.name, int(src.headers.get("Content-Length") or 0))
                verify(tmp)
            return
        except (OSError, http.client.HTTPException, UserError) as exc:
            log.warning("download of %s failed: %s", url, exc)
    raise UserError(f"could not download {final.name} from any mirror: check the network or copy the file to {final}")


def _copy_with_bar(src, out, name: str, size: int, chunk: int = 1 << 16) -> None:
    """Copy a download with a progress bar on a terminal (tqdm writes nothing elsewhere); a connection closed
    before `size` bytes (the server's Content-Length) is an interrupted download, not a short file."""
    from tqdm import tqdm

    copied = 0
    with tqdm(total=size or None, unit="B", unit_scale=True, desc=name, disable=not sys.stderr.isatty()) as bar:
        while block := src.read(chunk):
            out.write(block)
            copied += len(block)
            bar.update(len(block))
    if size and copied != size:
        raise OSError(f"interrupted after {copied} of {size} bytes")

"""Where the project finds data and keeps its cache: a data directory from a flag or
$DNI_PIPELINE_DATA (never assumed to exist), and a cache folder from $DNI_PIPELINE_CACHE."""

import os
from pathlib import Path

from .errors import UserError

__all__ = ["CACHE_DIR", "DATA_DIR_ENV", "resolve_data_dir"]

DATA_DIR_ENV = "DNI_PIPELINE_DATA"
CACHE_DIR = Path(os.environ.get("DNI_PIPELINE_CACHE", Path.home() / ".cache" / "dni-pipeline"))


def resolve_data_dir(data_dir: str | None) -> Path | None:
    """The data directory from the flag, else the environment variable, else None."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV)
    if chosen and not Path(chosen).is_dir():
        raise UserError(f"data directory {chosen} does not exist: point --data-dir (or ${DATA_DIR_ENV}) at a folder")
    return Path(chosen) if chosen else None

"""Job configs are dataclasses (a job's config may nest its training config as `train`): read from
YAML/JSON files with their types checked, saved as plain dicts and rebuilt from them, and varied one
field at a time by sweeps and resumed runs."""

import dataclasses
import json
import typing
from pathlib import Path

import yaml

from .errors import UserError

__all__ = ["check_file_values", "from_dict", "load_config_file", "with_values"]


def load_config_file(path: str) -> dict:
    """Keys of a YAML or JSON file (dashes or underscores) and their values."""
    file = Path(path)
    try:
        text = file.read_text()
        values = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror}: check the --config path") from None
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first_line = str(exc).splitlines()[0]
        raise UserError(f"config file {path} is not valid YAML/JSON ({first_line}): fix its syntax") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must hold a mapping of option names to values")
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def check_file_values(values: dict, fields: dict[str, type]) -> None:
    """Config files are untyped: refuse a key that is no field, or a value whose type does not fit it."""
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"unknown config key(s) {', '.join(unknown)}: valid keys are {', '.join(fields)}")
    for key, value in values.items():
        _check_type(key, value, fields[key])


def _check_type(key: str, value, annotation) -> None:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    ok = (
        (value is None and "None" in text)
        or (isinstance(value, bool) and text.startswith("bool"))
        or (isinstance(value, int) and not isinstance(value, bool) and text.startswith(("int", "float")))
        or (isinstance(value, float) and text.startswith("float"))
        or (isinstance(value, str) and text.startswith("str"))
        or (isinstance(value, list) and text.startswith("list") and all(isinstance(v, (int, float)) for v in value))
        or (isinstance(value, dict) and text.startswith("dict"))
    )
    if not ok:
        raise UserError(f"config key '{key}' has value {value!r}, which is not a {text}: fix it in the config file")


def from_dict(cls, values: dict):
    """The config `dataclasses.asdict` gave `values` for, nested dataclass fields included."""
    hints = typing.get_type_hints(cls)
    nested = {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}
    return cls(**{k: from_dict(nested[k], v) if k in nested else v for k, v in values.items()})


def with_values(cfg, values: dict):
    """A config with some fields replaced, validated; names of its nested `train` config's fields reach it."""
    if hasattr(cfg, "train"):
        train_fields = {f.name for f in dataclasses.fields(cfg.train)}
        train = dataclasses.replace(cfg.train, **{k: v for k, v in values.items() if k in train_fields})
        values = {"train": train, **{k: v for k, v in values.items() if k not in train_fields}}
    return dataclasses.replace(cfg, **values).validate()

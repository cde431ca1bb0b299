"""The grid of a sweep: `name=v1,v2` items typed by a config's fields, their combinations (all, or a
random sample), and the markdown table of trials."""

import dataclasses
import itertools
import random

from .errors import UserError

__all__ = ["combinations", "config_fields", "markdown_table", "parse_grid"]


def config_fields(*configs) -> dict[str, type]:
    """Field name -> declared type of the given dataclasses (nested dataclass fields left out)."""
    fields = {}
    for config in configs:
        fields.update({f.name: f.type for f in dataclasses.fields(config) if not dataclasses.is_dataclass(f.type)})
    return fields


def parse_grid(items: list[str], fields: dict[str, type]) -> dict[str, list]:
    """`name=v1,v2` items into {name: [typed values]}; names must be among `fields`."""
    grid = {}
    for item in items:
        name, _, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if name not in fields or not values:
            raise UserError(f"bad --grid '{item}': use name=v1,v2 with a name among {', '.join(sorted(fields))}")
        kind = {int: int, float: float, str: str}.get(fields[name])
        if kind is None:
            raise UserError(f"--grid cannot vary '{name}' (not a number or a word)")
        try:
            grid[name] = [kind(v) for v in values.split(",")]
        except ValueError:
            raise UserError(f"bad value in --grid '{item}': {name} takes {kind.__name__} values") from None
    return grid


def combinations(grid: dict[str, list], samples: int | None = None, seed: int = 0) -> list[dict]:
    """Every combination of the grid, or (random search) `samples` of them drawn without replacement."""
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    if samples is None:
        return combos
    if samples < 1:
        raise UserError("--samples must be at least 1")
    return random.Random(seed).sample(combos, min(samples, len(combos)))


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """Rows of dicts as a markdown table with the given columns ('-' where a row lacks one)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "-")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"

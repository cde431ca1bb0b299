"""Sweep plumbing shared by the diffusion and KG jobs."""

import pytest

from dni_pipeline.core.errors import UserError
from dni_pipeline.core.sweeps import combinations, markdown_table, parse_grid


def test_grid_is_typed_and_random_search_draws_distinct_combinations():
    grid = parse_grid(["dim=8,16", "lr=0.1,0.01,0.001", "model=complex"], {"dim": int, "lr": float, "model": str})
    assert grid == {"dim": [8, 16], "lr": [0.1, 0.01, 0.001], "model": ["complex"]}
    everything = combinations(grid)
    assert len(everything) == 6 and {"dim": 16, "lr": 0.001, "model": "complex"} in everything
    drawn = combinations(grid, samples=4, seed=1)
    assert len(drawn) == 4 and all(c in everything for c in drawn)
    assert len({tuple(c.values()) for c in drawn}) == 4 and drawn == combinations(grid, samples=4, seed=1)
    assert len(combinations(grid, samples=99)) == 6
    with pytest.raises(UserError, match="--samples must be at least 1"):
        combinations(grid, samples=0)


def test_bad_grids_name_the_fix():
    with pytest.raises(UserError, match="use name=v1,v2 with a name among dim"):
        parse_grid(["width=3"], {"dim": int})
    with pytest.raises(UserError, match="dim takes int values"):
        parse_grid(["dim=a"], {"dim": int})
    assert markdown_table([{"a": 1}], ["a", "b"]) == "| a | b |\n|---|---|\n| 1 | - |\n"

"""A user's code by import path, and which of its modules travel by value."""

import functools

import pytest
import torch

from dni_pipeline.core.errors import UserError
from dni_pipeline.core.imports import import_object, user_code_modules


def test_an_import_path_resolves_or_names_the_fix():
    assert import_object("torch.nn:Linear", "--model") is torch.nn.Linear
    assert import_object("torch:nn.functional.relu", "--model") is torch.nn.functional.relu
    with pytest.raises(UserError, match="'torch.nn.Linear' is not an import path: write it as package.module:function"):
        import_object("torch.nn.Linear", "--model")
    with pytest.raises(UserError, match="--data 'no_such_package:f': cannot import no_such_package"):
        import_object("no_such_package:f", "--data")
    with pytest.raises(UserError, match="torch.nn has no attribute 'Nothing'"):
        import_object("torch.nn:Nothing", "--model")


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(2, 2)


def _factory(index, num_stages):
    return _Block()


def test_the_modules_of_a_users_objects_are_found_through_partials_lists_and_submodules():
    found = user_code_modules([[_Block()], functools.partial(_factory, 1), None])
    assert {__name__, "torch.nn.modules.linear"} <= found

"""A user's own code on the cluster: objects named by an import path, ``package.module:attribute``, as
Ray job entry points and the Lightning CLI take them, and the user's modules sent by value to Ray's
workers, which cannot import a file that lies beside the user's script."""

import functools
import importlib
import sys
from collections.abc import Iterable
from pathlib import Path

from .errors import UserError

__all__ = ["import_object", "send_by_value", "user_code_modules"]

OWN_PACKAGES = ("dni_pipeline", "diffusion", "kg")


def import_object(path: str, flag: str):
    """The attribute `path` names; a path that does not resolve is one line naming `flag` and the fix."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise UserError(f"{flag} '{path}' is not an import path: write it as package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a missing module, or one that fails as it is imported
        raise UserError(f"{flag} '{path}': cannot import {module_name} ({type(exc).__name__}: {exc}): install it, "
                        "add its folder to PYTHONPATH, or fix the module") from None
    try:
        target = module
        for name in attribute.split("."):
            target = getattr(target, name)
    except AttributeError:
        raise UserError(f"{flag} '{path}': {module_name} has no attribute '{attribute}': check the name after ':'") from None
    return target


def send_by_value(module_names: Iterable[str]) -> None:
    """Have cloudpickle carry the code of these modules with the objects that use them, unless the module is
    installed (the standard library, site-packages, this project): a worker process on any node can then
    rebuild a user's classes and functions without the user's files on its path."""
    import ray.cloudpickle

    installed = (Path(sys.prefix), Path(sys.base_prefix))
    for name in set(module_names):
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if module is None or path is None or name == "__main__" or name.split(".")[0] in OWN_PACKAGES:
            continue  # __main__ is sent by value already
        resolved = Path(path).resolve()
        if any(part in ("site-packages", "dist-packages") for part in resolved.parts) or any(
                resolved.is_relative_to(root.resolve()) for root in installed):
            continue
        ray.cloudpickle.register_pickle_by_value(module)


def user_code_modules(objects) -> set[str]:
    """The Python modules that define the classes and functions in `objects`: torch modules (and every
    submodule), factories, partials, callables, and lists of them."""
    names: set[str] = set()
    for obj in objects:
        if obj is None:
            continue
        if isinstance(obj, (list, tuple)):
            names |= user_code_modules(obj)
        elif isinstance(obj, functools.partial):
            names |= user_code_modules([obj.func, *obj.args, *obj.keywords.values()])
        elif hasattr(obj, "named_modules") and not isinstance(obj, type):  # a torch module: its classes and its children's
            names |= {type(m).__module__ for m in obj.modules()}
        else:
            names.add(getattr(obj, "__module__", None) or type(obj).__module__)
    return names

"""Imports point one way: the core imports nothing else of ours, each domain (the unlocked trainer,
cluster operations, diffusion, kg) imports only the core and itself, and only the command line and
the package's public face (`dni_pipeline/__init__.py`, which re-exports the trainer's API on first use)
import the domains. Read from the import statements of every module, lazy imports included."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dni_pipeline", "diffusion", "kg")
DOMAINS = ("dni_pipeline.trainer", "dni_pipeline.ops", "diffusion", "kg")
TOP = {"dni_pipeline.__init__", "dni_pipeline.cli", "dni_pipeline.__main__"}


def _layer(module: str) -> str:
    for layer in ("dni_pipeline.core", *DOMAINS):
        if module == layer or module.startswith(layer + "."):
            return layer
    return module


def _project_imports(path: Path) -> set[str]:
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES}
    return found


def _modules() -> dict[str, set[str]]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): _project_imports(p)
            for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def test_the_import_reader_sees_relative_and_lazy_imports():
    modules = _modules()
    assert "dni_pipeline.core.errors" in modules["dni_pipeline.core.run_folder"]  # `from .errors import UserError`
    assert "kg.commands" in modules["dni_pipeline.cli"]  # imported inside a function


def test_imports_point_one_way():
    problems = []
    for module, imports in _modules().items():
        if module in TOP:
            continue
        own = _layer(module)
        allowed = {own, "dni_pipeline.core"}
        problems += [f"{module} imports {imported}" for imported in imports if _layer(imported) not in allowed]
    assert problems == []


def test_only_the_command_line_imports_the_domains():
    importers = {module for module, imports in _modules().items()
                 if len({_layer(i) for i in imports} & set(DOMAINS) - {_layer(module)}) > 0}
    assert importers == {"dni_pipeline.__init__", "dni_pipeline.cli"}

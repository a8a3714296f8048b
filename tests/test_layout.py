"""The package's layering: the library never imports the command line or the simulators.

``simulators`` depends on ``streamwatch``, never the reverse; only ``streamwatch/commands/``
(where the library, the simulators and the user's flags meet) may import ``simulators``, and
only it (and ``streamwatch/__main__.py``, which is ``python -m streamwatch``) imports
``streamwatch.commands``. The daemon, in particular, starts without either.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "streamwatch"
COMMANDS = PACKAGE / "commands"
ENTRY_POINTS = {PACKAGE / "__main__.py"}
"""Modules that are the command line themselves, though they live outside commands/."""

FORBIDDEN = ("streamwatch.commands", "simulators")


def _forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(path: Path) -> Iterator[tuple[int, str]]:
    """``(line, absolute module)`` of every import anywhere in the file: top level, inside
    functions, under ``if TYPE_CHECKING``, and ``importlib.import_module("...")`` calls."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            yield node.lineno, mod
            for alias in node.names:  # `from streamwatch import commands`
                yield node.lineno, f"{mod}.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def _library_modules() -> list[Path]:
    return [
        p
        for p in sorted(PACKAGE.rglob("*.py"))
        if COMMANDS not in p.parents and p not in ENTRY_POINTS
    ]


def test_library_never_imports_the_command_line_or_the_simulators() -> None:
    modules = _library_modules()
    assert len(modules) > 20, "the walk found too few modules"
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {mod}"
        for p in modules
        for line, mod in _imported(p)
        if _forbidden(mod)
    ]
    assert not bad, "\n".join(bad)


def test_the_import_walk_sees_imports_inside_functions() -> None:
    # The command layer imports the simulators lazily, inside its handlers: the walk must see it.
    found = {mod for _, mod in _imported(COMMANDS / "evaluate.py")}
    assert "simulators.generate" in found


def test_the_daemon_starts_without_the_command_line_or_the_simulators() -> None:
    code = "import streamwatch.daemon, streamwatch; print(streamwatch.__file__)"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        cwd=ROOT,
        env=dict(os.environ),  # PYTHONPATH passes through
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert Path(proc.stdout.strip()).resolve() == PACKAGE / "__init__.py", (
        f"imported {proc.stdout.strip()}, not this tree's streamwatch"
    )
    imported = [
        line.split("|")[-1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    ]
    assert "streamwatch.daemon" in imported
    bad = sorted({m for m in imported if _forbidden(m)})
    assert not bad, f"importing streamwatch.daemon imported {bad}"

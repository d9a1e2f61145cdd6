"""Static checks: the import rule of the project's ruff config, a clean core, no ``.item()`` in library code."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LIBRARY = ("memory", "models", "export")


def _ruff() -> str:
    for candidate in (Path(sys.executable).parent / "ruff", ROOT / ".venv" / "bin" / "ruff"):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (pip install 'memstream[dev]')")
    return found


def _ruff_codes(path: Path) -> list[tuple[int, str]]:
    """(line, code) of every ruff finding in ``path``, checked with the project's configuration."""
    proc = subprocess.run([_ruff(), "check", "--config", str(PYPROJECT), "--output-format", "json",
                           "--no-cache", str(path)], capture_output=True, text=True, cwd=path.parent)
    assert proc.returncode in (0, 1), proc.stderr
    return sorted((d["location"]["row"], d["code"]) for d in json.loads(proc.stdout))


@pytest.mark.parametrize("line,code", [
    ("import models", "TID251"),
    ("import memory.core", "TID251"),
    ("from memory import x", "TID251"),
    ("from pipelines.cli import main", "TID251"),
    ("from export import ExportStep", "TID251"),
    ("from .x import y", "TID252"),
    ("from ..memory import core", "TID252"),
])
def test_banned_imports_are_reported(line, code, tmp_path):
    source = tmp_path / "bad.py"
    source.write_text(f"{line}  # noqa: F401\n")
    assert (1, code) in _ruff_codes(source)


def test_memstream_imports_are_allowed(tmp_path):
    source = tmp_path / "good.py"
    source.write_text("from memstream.memory import CoreConfig\n\nprint(CoreConfig)\n")
    assert _ruff_codes(source) == []


def test_library_passes_ruff():
    proc = subprocess.run([_ruff(), "check", "--no-cache", *LIBRARY], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _item_calls(path: Path) -> list[int]:
    """Lines of ``<expr>.item()`` calls in code (docstrings and comments do not count)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "item"
            and not node.args and not node.keywords]


def test_no_item_in_library_code():
    """``.item()`` syncs with the device and freezes values into exported graphs: never in library code."""
    sources = [p for folder in LIBRARY for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(sources) >= 10
    found = [f"{p.relative_to(ROOT)}:{line}" for p in sources for line in _item_calls(p)]
    assert not found, f".item() in library code: {found}"


def test_item_detector_works(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('"""Docs may say .item()."""\n# so may comments: x.item()\nn = t.sum().item()\n')
    assert _item_calls(probe) == [3]

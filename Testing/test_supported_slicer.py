"""On a Slicer older than the supported one, the module must still load and say so clearly.

Slicer imports every top-level ``.py`` file of a module folder at start-up
(``qSlicerScriptedUtils::loadSourceAsModule``), whatever its version. Slicer 5.6 and 5.8 run
Python 3.9, where the extension's logic cannot run (``zip(strict=...)``, ``isinstance(x, A | B)``,
torch 2.x). So ``DKUXNetSegment.py`` imports only Python 3.9-safe files before its version
check, and everything else under ``if SUPPORTED:``. These tests find, from the import
statements themselves, which files are imported before that check, and hold them to Python 3.9.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from DKUXNetSegmentLib.supported import MINIMUM_SLICER, unsupported_reason

MODULE_DIR = Path(__file__).resolve().parent.parent / "DKUXNetSegment"
SCRIPT = MODULE_DIR / "DKUXNetSegment.py"
FIRST_PARTY = ("dkuxnet", "DKUXNetSegmentLib")
OLDEST_PYTHON = (3, 9)  # Slicer 5.6 and 5.8


def unconditional_imports(path: Path) -> list[str]:
    """Modules imported by statements directly in the file's body (not under if/try/def)."""
    names = []
    for statement in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(statement, ast.Import):
            names += [alias.name for alias in statement.names]
        elif isinstance(statement, ast.ImportFrom) and statement.module and not statement.level:
            names.append(statement.module)
    return names


def module_files(name: str) -> list[Path]:
    """The files importing ``name`` runs: every package ``__init__`` on the way, then the module."""
    files = []
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        base = MODULE_DIR.joinpath(*parts[:depth])
        if (base / "__init__.py").is_file():
            files.append(base / "__init__.py")
        elif base.with_suffix(".py").is_file():
            files.append(base.with_suffix(".py"))
    return files


def files_imported_before_the_check() -> list[Path]:
    found, todo = [], [SCRIPT]
    while todo:
        path = todo.pop()
        if path in found:
            continue
        found.append(path)
        for name in unconditional_imports(path):
            if name.split(".")[0] in FIRST_PARTY:
                todo += module_files(name)
    return found


BEFORE_THE_CHECK = files_imported_before_the_check()


def test_only_the_check_itself_is_imported_before_the_check() -> None:
    names = {path.relative_to(MODULE_DIR).as_posix() for path in BEFORE_THE_CHECK}
    assert names == {
        "DKUXNetSegment.py",
        "DKUXNetSegmentLib/__init__.py",
        "DKUXNetSegmentLib/supported.py",
    }, "import the rest of the extension under `if SUPPORTED:` in DKUXNetSegment.py"


@pytest.mark.parametrize("path", BEFORE_THE_CHECK, ids=lambda p: p.name)
def test_parses_as_python_39(path: Path) -> None:
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=OLDEST_PYTHON)


@pytest.mark.parametrize("path", BEFORE_THE_CHECK, ids=lambda p: p.name)
def test_uses_no_python_310_runtime_features(path: Path) -> None:
    """What parses on 3.9 but raises there: the failures that stopped the panel on 5.6/5.8."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    postponed = any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(alias.name == "annotations" for alias in node.names)
        for node in tree.body
    )
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "zip" and any(k.arg == "strict" for k in node.keywords):
                problems.append(f"line {node.lineno}: zip(strict=...)")
            classes = node.args[1] if len(node.args) == 2 else None
            if node.func.id in ("isinstance", "issubclass") and _is_union(classes):
                problems.append(f"line {node.lineno}: {node.func.id}(x, A | B)")
        if isinstance(node, ast.Match):
            problems.append(f"line {node.lineno}: match statement")
        annotations = []
        if isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            annotations += [a.annotation for a in ast.walk(node.args) if isinstance(a, ast.arg)]
            annotations.append(node.returns)
        for annotation in annotations:
            if annotation is not None and not postponed and "|" in ast.unparse(annotation):
                problems.append(f"line {node.lineno}: X | Y annotation without postponed ones")
    assert not problems, f"{path.name}: " + "; ".join(problems)


def _is_union(node: ast.AST | None) -> bool:
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)


def test_the_message_names_what_is_needed() -> None:
    message = unsupported_reason((3, 9, 10), slicer_version="5.8.1")
    assert message is not None
    assert f"3D Slicer {MINIMUM_SLICER} or newer" in message
    assert "Slicer 5.8.1 (Python 3.9.10)" in message
    assert unsupported_reason((3, 9, 18)) is not None
    assert unsupported_reason((3, 10, 0)) is None
    assert unsupported_reason((3, 12, 10), slicer_version="5.10.0") is None
    assert unsupported_reason() is None  # the interpreter running the tests is supported

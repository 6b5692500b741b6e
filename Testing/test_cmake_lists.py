"""The extension packaging: module CMakeLists lists every file; catalogue entry is complete.

Slicer installs only what ``slicerMacroBuildScriptedModule`` is given, so a core file that is
not listed works from the source tree and is missing from the packaged extension. This test
makes that a CI failure; ``python scripts/sync_cmake_lists.py`` fixes it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULE_DIR = ROOT / "DKUXNetSegment"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
TOP_CMAKE = ROOT / "CMakeLists.txt"
S4EXT = ROOT / "DKUXNetSegment.s4ext"
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


def files_on_disk() -> set[str]:
    """Every file under the module folder that would ship: not ignored by git, not a cache."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "."],
            cwd=MODULE_DIR,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        found = {line for line in out.splitlines() if line}
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the folder
        found = set()
        for dirpath, dirnames, filenames in os.walk(MODULE_DIR):
            dirnames[:] = [
                d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")
            ]
            for name in filenames:
                if not name.endswith((".pyc", ".pyo")):
                    rel = Path(dirpath, name).relative_to(MODULE_DIR)
                    found.add(rel.as_posix())
    return {f for f in found if f != "CMakeLists.txt" and (MODULE_DIR / f).is_file()}


def cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\(\s*{variable}\b(.*?)\)", text, re.DOTALL)
    assert match, f"no set({variable} ...) in {MODULE_CMAKE}"
    body = re.sub(r"#.*", "", match.group(1))
    return [item.replace("${MODULE_NAME}", "DKUXNetSegment") for item in body.split()]


def test_every_module_file_is_listed_once() -> None:
    text = MODULE_CMAKE.read_text()
    scripts = cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = cmake_list(text, "MODULE_PYTHON_RESOURCES")
    listed = scripts + resources
    duplicates = sorted({f for f in listed if listed.count(f) > 1})
    assert not duplicates, f"listed twice in {MODULE_CMAKE.name}: {duplicates}"
    on_disk = files_on_disk()
    unlisted = sorted(on_disk - set(listed))
    assert not unlisted, (
        f"files missing from DKUXNetSegment/CMakeLists.txt (run scripts/sync_cmake_lists.py): "
        f"{unlisted}"
    )
    stale = sorted(set(listed) - on_disk)
    assert not stale, f"listed in DKUXNetSegment/CMakeLists.txt but not on disk: {stale}"
    assert all(f.endswith(".py") for f in scripts)
    assert not any(f.endswith(".py") for f in resources), "Python files go in MODULE_PYTHON_SCRIPTS"


def test_module_cmake_uses_the_scripted_module_macros() -> None:
    text = MODULE_CMAKE.read_text()
    assert "slicerMacroBuildScriptedModule(" in text
    assert re.search(r"SCRIPTS\s+\$\{MODULE_PYTHON_SCRIPTS\}", text)
    assert re.search(r"RESOURCES\s+\$\{MODULE_PYTHON_RESOURCES\}", text)
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py", text)
    assert not re.search(r"file\s*\(\s*GLOB", text, re.IGNORECASE), "list files, do not glob"


def top_level_variables() -> dict[str, str]:
    text = TOP_CMAKE.read_text()
    return dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))


def s4ext_fields() -> dict[str, str]:
    fields = {}
    for line in S4EXT.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            fields[key] = value.strip()
    return fields


def test_top_level_cmake_is_a_slicer_extension() -> None:
    text = TOP_CMAKE.read_text()
    for needle in (
        "cmake_minimum_required(",
        "project(DKUXNetSegment)",
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        "add_subdirectory(DKUXNetSegment)",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ):
        assert needle in text, needle
    variables = top_level_variables()
    for name in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "DEPENDS"):
        assert variables.get(f"EXTENSION_{name}"), f"EXTENSION_{name} is empty"
    assert "EXTENSION_SCREENSHOTURLS" in variables
    # the order matters: the extension variables must be set before find_package(Slicer)
    assert text.index("EXTENSION_HOMEPAGE") < text.index("find_package(Slicer")


def test_s4ext_is_complete_and_agrees_with_cmake() -> None:
    fields = s4ext_fields()
    required = [
        "scm",
        "scmurl",
        "scmrevision",
        "depends",
        "build_subdirectory",
        "homepage",
        "contributors",
        "category",
        "iconurl",
        "status",
        "description",
        "screenshoturls",
        "enabled",
    ]
    missing = [key for key in required if key not in fields]
    assert not missing, f"{S4EXT.name} lacks {missing}"
    for key in ("scm", "scmurl", "scmrevision", "homepage", "category", "iconurl", "description"):
        assert fields[key], f"{key} is empty"
    assert fields["enabled"] in ("0", "1")
    variables = top_level_variables()
    pairs = {
        "homepage": "EXTENSION_HOMEPAGE",
        "category": "EXTENSION_CATEGORY",
        "contributors": "EXTENSION_CONTRIBUTORS",
        "description": "EXTENSION_DESCRIPTION",
        "iconurl": "EXTENSION_ICONURL",
        "screenshoturls": "EXTENSION_SCREENSHOTURLS",
        "depends": "EXTENSION_DEPENDS",
    }
    for key, variable in pairs.items():
        assert fields[key] == variables[variable], f"{key} differs from {variable}"
    assert fields["iconurl"].endswith("/Resources/DKUXNetSegment.png")


def test_icons_are_128_pixel_pngs() -> None:
    image_module = pytest.importorskip("PIL.Image")
    extension_icon = ROOT / "Resources" / "DKUXNetSegment.png"
    module_icon = MODULE_DIR / "Resources" / "Icons" / "DKUXNetSegment.png"
    for path in (extension_icon, module_icon):
        with image_module.open(path) as image:
            assert image.format == "PNG" and image.size == (128, 128), path
    assert extension_icon.read_bytes() == module_icon.read_bytes()

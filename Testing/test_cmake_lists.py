"""The extension packaging: module CMakeLists lists every file; catalogue entry is complete.

Slicer installs only what ``slicerMacroBuildScriptedModule`` is given, so a core file that is
not listed works from the source tree and is missing from the packaged extension. This test
makes that a CI failure; ``python scripts/sync_cmake_lists.py`` fixes it.

The catalogue checks mirror what the extensions index checks on a new entry
(``scripts/check_description_files.py`` of Slicer/ExtensionsIndex): a ``NAME.json`` entry
valid against the catalogue-entry schema, a top-level ``project(NAME)``, icon and screenshot
URLs that are images, a licence file at the root. Since Slicer 5.8 the index holds ``.json``
entries; the project's specification also lists a top-level ``.s4ext`` description file, which
``scripts/sync_s4ext.py`` generates from the other two, and the three must agree.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULE_DIR = ROOT / "DKUXNetSegment"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
TOP_CMAKE = ROOT / "CMakeLists.txt"
EXTENSION = "DKUXNetSegment"
CATALOGUE_ENTRY = ROOT / f"{EXTENSION}.json"
# Slicer/Slicer Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json: its properties
# (additionalProperties is false) and required keys
SCHEMA_URL = (
    "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
    "slicer-extension-catalog-entry-schema-v1.0.1.json#"
)
SCHEMA_PROPERTIES = {
    "$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
    "build_subdirectory", "enabled", "tier",
}  # fmt: skip
SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}
# cmake_minimum_required of Slicer 5.10's extension template (the oldest supported Slicer)
TEMPLATE_CMAKE_RANGE = "3.20.6...3.22.6"
RAW_URL = "https://raw.githubusercontent.com/DKUXNetSegment/SlicerDKUXNetSegment/main/"
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


def test_top_level_cmake_is_a_slicer_extension() -> None:
    text = TOP_CMAKE.read_text()
    for needle in (
        f"cmake_minimum_required(VERSION {TEMPLATE_CMAKE_RANGE} FATAL_ERROR)",
        f"project({EXTENSION})",
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        "add_subdirectory(DKUXNetSegment)",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ):
        assert needle in text, needle
    variables = top_level_variables()
    for name in ("HOMEPAGE", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert variables.get(f"EXTENSION_{name}"), f"EXTENSION_{name} is empty"
    # since Slicer 5.8 the category lives in the catalogue entry (the template dropped it)
    assert "EXTENSION_CATEGORY" not in variables
    assert "Slicer 5.10 or newer" in variables["EXTENSION_DESCRIPTION"]
    # the order matters: the extension variables must be set before find_package(Slicer)
    assert text.index("EXTENSION_HOMEPAGE") < text.index("find_package(Slicer")


def test_icon_and_screenshot_urls_are_images_in_this_repository() -> None:
    """The index downloads them; here: each URL names a PNG committed at that path."""
    variables = top_level_variables()
    urls = [variables["EXTENSION_ICONURL"], *variables["EXTENSION_SCREENSHOTURLS"].split()]
    assert len(urls) >= 2
    for url in urls:
        assert url.startswith(RAW_URL), url
        path = ROOT / url[len(RAW_URL) :]
        assert path.is_file(), f"{url}: no {path.relative_to(ROOT)}"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"


def test_catalogue_entry_is_valid() -> None:
    raw = CATALOGUE_ENTRY.read_bytes()
    assert b"\r" not in raw, "the index wants LF line endings"
    entry = json.loads(raw)
    assert entry.keys() >= SCHEMA_REQUIRED, SCHEMA_REQUIRED - entry.keys()
    assert entry.keys() <= SCHEMA_PROPERTIES, entry.keys() - SCHEMA_PROPERTIES
    assert entry["$schema"] == SCHEMA_URL
    assert entry["category"] == "Segmentation"  # one of the index's accepted categories
    url = urlsplit(entry["scm_url"])
    assert url.scheme == "https" and url.netloc == "github.com"
    owner_and_repository = url.path.strip("/").removesuffix(".git")
    assert owner_and_repository.split("/")[-1].startswith("Slicer")  # the index's naming rule
    assert not EXTENSION.startswith("Slicer")
    assert f"https://raw.githubusercontent.com/{owner_and_repository}/main/" == RAW_URL
    assert isinstance(entry.get("tier", 1), int) and 1 <= entry.get("tier", 1) <= 5
    assert entry.get("build_subdirectory", ".") == "."
    depends = top_level_variables()["EXTENSION_DEPENDS"]
    expected = [] if depends == "NA" else depends.replace(";", " ").split()
    assert entry.get("build_dependencies", []) == expected


S4EXT = ROOT / f"{EXTENSION}.s4ext"


def s4ext_fields() -> dict[str, str]:
    """``keyword value`` lines of the .s4ext (comments and blank lines left out)."""
    fields = {}
    for line in S4EXT.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            assert key not in fields, f"{key} twice in {S4EXT.name}"
            fields[key] = value.strip()
    return fields


def test_the_s4ext_is_generated_from_the_cmake_lists_and_the_json() -> None:
    spec = importlib.util.spec_from_file_location("sync_s4ext", ROOT / "scripts" / "sync_s4ext.py")
    assert spec is not None and spec.loader is not None
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    assert S4EXT.read_bytes() == sync.expected_text().encode("utf-8"), (
        f"{S4EXT.name} is out of date: run python scripts/sync_s4ext.py"
    )


def test_s4ext_json_and_cmake_lists_agree() -> None:
    """Name, homepage, repository, category, dependencies, description, icon, screenshots."""
    fields = s4ext_fields()
    entry = json.loads(CATALOGUE_ENTRY.read_text(encoding="utf-8"))
    variables = top_level_variables()
    assert re.search(rf"^project\({EXTENSION}\)", TOP_CMAKE.read_text(), re.MULTILINE)
    assert S4EXT.stem == CATALOGUE_ENTRY.stem == EXTENSION
    assert fields["homepage"] == variables["EXTENSION_HOMEPAGE"]
    assert fields["scm"] == entry.get("scm_type", "git") == "git"
    assert fields["scmurl"] == entry["scm_url"]
    assert fields["scmurl"].removesuffix(".git") == variables["EXTENSION_HOMEPAGE"]
    assert fields["scmrevision"] == entry["scm_revision"]
    assert fields["category"] == entry["category"]
    depends = variables["EXTENSION_DEPENDS"].replace(";", " ").split()
    assert fields["depends"].split() == depends == entry["build_dependencies"]
    assert fields["build_subdirectory"] == entry["build_subdirectory"]
    assert fields["description"] == variables["EXTENSION_DESCRIPTION"]
    assert fields["contributors"] == variables["EXTENSION_CONTRIBUTORS"]
    assert fields["iconurl"] == variables["EXTENSION_ICONURL"]
    assert fields["screenshoturls"].split() == variables["EXTENSION_SCREENSHOTURLS"].split()
    assert fields["enabled"] == "1"
    assert b"\r" not in S4EXT.read_bytes()


def test_license_file_at_the_root_matches_the_package_licence() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()


def test_icons_are_128_pixel_pngs() -> None:
    image_module = pytest.importorskip("PIL.Image")
    extension_icon = ROOT / "Resources" / "DKUXNetSegment.png"
    module_icon = MODULE_DIR / "Resources" / "Icons" / "DKUXNetSegment.png"
    for path in (extension_icon, module_icon):
        with image_module.open(path) as image:
            assert image.format == "PNG" and image.size == (128, 128), path
    assert extension_icon.read_bytes() == module_icon.read_bytes()

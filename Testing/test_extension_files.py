"""Static checks that the extension passes what the Slicer ExtensionsIndex checks before it
accepts an extension, and that the supported Slicer (and so Python) versions agree
everywhere they are stated (issue 13, findings 7 and 8, build items 5 and 7).

The index's checker (``scripts/check_description_files.py`` of ``Slicer/ExtensionsIndex``)
clones the repository named in the catalog entry ``XRayToCT.json`` and requires: the entry to
validate against the catalog-entry JSON schema it names, LF line endings, an accepted category,
a repository name containing "Slicer", an extension name not starting with "Slicer", a
``project()`` name equal to the entry's file name, an ``EXTENSION_ICONURL`` and at least one
``EXTENSION_SCREENSHOTURLS`` that download as images, and a licence file at the root. What
needs the network (the downloads, the GitHub topic ``3d-slicer-extension``) is checked here
offline: every URL must name a file tracked by git on the branch the URLs point at.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
CMAKE = ROOT / "CMakeLists.txt"
CATALOG_ENTRY = ROOT / "XRayToCT.json"
README = ROOT / "README.md"
PYPROJECT = ROOT / "pyproject.toml"
TEMPLATE_LICENSE = ROOT / "XRayToCT" / "Resources" / "Templates" / "rorden_scct" / "LICENSE"

REPOSITORY = "xraytoct/SlicerXRayToCT"
BRANCH = "main"
RAW_PREFIX = f"https://raw.githubusercontent.com/{REPOSITORY}/{BRANCH}/"

# ACCEPTED_EXTENSION_CATEGORIES of Slicer/ExtensionsIndex scripts/check_description_files.py
# (its newest version, the one that also checks the GitHub topic; check_category rejects any
# other category, "Reconstruction" included).
ACCEPTED_CATEGORIES = frozenset({
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform",
    "Conda", "Converters", "DICOM", "DSCI", "Developer Tools", "Diffusion", "Examples",
    "Exporter", "FTV Segmentation", "Filtering", "Filtering.Morphology", "Filtering.Vesselness",
    "Holographic Display", "Image Synthesis", "IGT", "Informatics", "Netstim", "Neuroimaging",
    "Nuclear Medicine", "Orthodontics", "Osteotomy Planning", "Otolaryngology", "Photogrammetry",
    "Pipelines", "Planning", "Printing", "Quantification", "Radiotherapy", "Registration",
    "Remote", "Rendering", "SPHARM", "Segmentation", "Sequences", "Shape Analysis",
    "Shape Regression", "Shape Visualization", "Simulation", "SlicerCMF", "SlicerMorph",
    "Spectral Imaging", "Supervisely", "Surface Models", "SurfaceLearner",
    "Tomographic Reconstruction", "Tracking", "Tractography", "Training", "Ultrasound",
    "Utilities", "Vascular Modeling Toolkit", "Virtual Reality", "VisSimTools",
    "Web System Tools", "Wizards",
})

# Slicer/Slicer Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json (the version the
# index's current entries name): "required", the "properties" (additionalProperties is
# false) and the "tier" enum.
SCHEMA_URL = ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
              "slicer-extension-catalog-entry-schema-v1.0.1.json#")
SCHEMA_REQUIRED = ("$schema", "category", "scm_url")
SCHEMA_TYPES: dict[str, type] = {
    "$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
    "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int,
}
SCHEMA_TIERS = (1, 3, 5)

# The Python each Slicer release bundles (issue 13 finding 8, from Slicer's source):
# 5.8 ships Python 3.9.10, 5.10 and later ship 3.12.
SLICER_PYTHON = {(5, 8): (3, 9), (5, 10): (3, 12)}

IMAGE_MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff", ".jpeg": b"\xff\xd8\xff",
               ".gif": b"GIF8"}


# ---------------------------------------------------------------------------------------
# small readers
# ---------------------------------------------------------------------------------------

def _cmake_set(text: str, name: str) -> str | None:
    """The quoted value of ``set(NAME "value")`` (comments outside quotes ignored), or None."""
    m = re.search(r'^\s*set\s*\(\s*' + re.escape(name) + r'\s+"((?:[^"\\]|\\.)*)"\s*\)',
                  text, re.MULTILINE | re.IGNORECASE)
    return m.group(1) if m else None


def _cmake_unquoted_set(text: str, name: str) -> list[str]:
    """The words of ``set(NAME a b c)`` (unquoted), comment after it dropped."""
    m = re.search(r'^\s*set\s*\(\s*' + re.escape(name) + r'\s+([^)"]*)\)', text,
                  re.MULTILINE | re.IGNORECASE)
    return m.group(1).split() if m else []


def _cmake_project(text: str) -> str | None:
    m = re.search(r"^\s*project\s*\(\s*([^\s)]+)", text, re.MULTILINE | re.IGNORECASE)
    return m.group(1).strip('"') if m else None


def _index_urls(text: str) -> tuple[str | None, list[str]]:
    """Icon URL and screenshot URLs as the index's checker reads them: ``set(EXTENSION_ICONURL
    "url")`` and ``set(EXTENSION_SCREENSHOTURLS "url url ...")`` with the closing parenthesis
    right after the quote (its regular expressions do not allow a comment or a break there)."""
    icon = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', text, re.IGNORECASE)
    shots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', text, re.IGNORECASE)
    return (icon[0].strip() if icon else None), (shots[0].split() if shots else [])


def _url_problems(urls: list[str], tracked: set[str], root: Path = ROOT) -> list[str]:
    """What is wrong with image URLs that must resolve to files of this repository's branch."""
    problems = []
    for url in urls:
        if not url.startswith(RAW_PREFIX):
            problems.append(f"{url}: not under {RAW_PREFIX}")
            continue
        path = url[len(RAW_PREFIX):]
        suffix = Path(path).suffix.lower()
        if suffix not in IMAGE_MAGIC:
            problems.append(f"{url}: not a .png, .jpg or .gif name")
        if path not in tracked:
            problems.append(f"{url}: {path} is not a file tracked by git")
        elif suffix in IMAGE_MAGIC:
            if not (root / path).read_bytes().startswith(IMAGE_MAGIC[suffix]):
                problems.append(f"{url}: {path} is not a {suffix} image")
    return problems


def _tracked_files() -> set[str]:
    """Files git tracks in this checkout; skips when this is not a git checkout."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: cannot tell which files are tracked")
    result = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True)
    if result.returncode != 0:
        pytest.skip("not a git checkout: the URLs' files cannot be checked against git")
    return {p for p in result.stdout.decode("utf-8").split("\0") if p}


def _minimum_slicer(text: str, where: str) -> tuple[int, int]:
    found = set(re.findall(r"Slicer (\d+)\.(\d+) or later", text))
    assert len(found) == 1, f"{where}: one 'Slicer X.Y or later' expected, found {sorted(found)}"
    version = tuple(int(x) for x in found.pop())
    assert version in SLICER_PYTHON, f"{where}: Slicer {version} is not in SLICER_PYTHON"
    return version


def _requires_python() -> SpecifierSet:
    m = re.search(r'^requires-python\s*=\s*"([^"]+)"', PYPROJECT.read_text(encoding="utf-8"),
                  re.MULTILINE)
    assert m, "pyproject.toml has no requires-python"
    return SpecifierSet(m.group(1))


def _supported_section(readme: str) -> str:
    m = re.search(r"\*Supported Slicer versions\*:(.*?)\n\n", readme, re.DOTALL)
    assert m, "README: no '*Supported Slicer versions*:' paragraph"
    return " ".join(m.group(1).split())


@pytest.fixture(scope="module")
def cmake_text() -> str:
    return CMAKE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def entry() -> dict:
    return json.loads(CATALOG_ENTRY.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------
# the licence
# ---------------------------------------------------------------------------------------

def test_license_is_bsd_3_clause():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    flat = " ".join(text.split())
    assert text.startswith("BSD 3-Clause License\n")
    assert re.search(r"Copyright \(c\) 2026, XRayToCT developers", text)
    for clause in ("Redistributions of source code must retain the above copyright notice",
                   "Redistributions in binary form must reproduce the above copyright notice",
                   "Neither the name of the copyright holder nor the names of its contributors "
                   "may be used to endorse or promote products derived from this software "
                   "without specific prior written permission",
                   'THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"'):
        assert clause in flat, f"LICENSE lacks: {clause}"
    pyproject = PYPROJECT.read_text(encoding="utf-8")
    assert re.search(r'^license\s*=\s*\{\s*text\s*=\s*"BSD-3-Clause"\s*\}', pyproject, re.MULTILINE)


def test_license_names_the_template_licence():
    """The shipped Rorden template keeps its own BSD 2-Clause licence beside it, and the root
    LICENSE points at it."""
    template = TEMPLATE_LICENSE.read_text(encoding="utf-8")
    assert template.startswith("BSD 2-Clause License\n")
    assert "Copyright (c) 2021, Chris Rorden" in template
    assert "Neither the name" not in template  # the 2-clause text, not the 3-clause one
    flat = " ".join((ROOT / "LICENSE").read_text(encoding="utf-8").split())
    assert "BSD 2-Clause" in flat and "Chris Rorden" in flat
    assert TEMPLATE_LICENSE.relative_to(ROOT).as_posix() in flat


# ---------------------------------------------------------------------------------------
# the category and the catalog entry
# ---------------------------------------------------------------------------------------

def test_cmake_category_is_accepted(cmake_text: str):
    category = _cmake_set(cmake_text, "EXTENSION_CATEGORY")
    assert category in ACCEPTED_CATEGORIES, f"category {category!r} is not accepted by the index"


def test_catalog_entry_follows_the_schema(entry: dict):
    raw = CATALOG_ENTRY.read_bytes()
    assert b"\r" not in raw, "the index wants LF-only line endings"
    assert entry["$schema"] == SCHEMA_URL
    for key in SCHEMA_REQUIRED:
        assert entry.get(key), f"required key {key!r} missing or empty"
    unknown = set(entry) - set(SCHEMA_TYPES)
    assert not unknown, f"keys the schema does not allow: {sorted(unknown)}"
    for key, value in entry.items():
        assert type(value) is SCHEMA_TYPES[key], f"{key}: {type(value).__name__}"
    assert all(isinstance(d, str) for d in entry.get("build_dependencies", []))
    assert entry.get("tier", 1) in SCHEMA_TIERS
    assert entry.get("scm_type", "git") == "git"


def test_catalog_entry_agrees_with_the_extension(entry: dict, cmake_text: str):
    assert "PyTorch" in entry["build_dependencies"]
    assert "PyTorch" in _cmake_unquoted_set(cmake_text, "EXTENSION_DEPENDS")
    assert entry["category"] == _cmake_set(cmake_text, "EXTENSION_CATEGORY")
    assert entry["scm_url"] == f"https://github.com/{REPOSITORY}.git"
    assert entry["scm_revision"] == BRANCH
    assert _cmake_set(cmake_text, "EXTENSION_HOMEPAGE") == f"https://github.com/{REPOSITORY}"
    # the index: the entry's file name is the project() name, which must not start with
    # "Slicer", and the repository's name must contain "Slicer"
    assert _cmake_project(cmake_text) == CATALOG_ENTRY.stem
    assert not CATALOG_ENTRY.stem.lower().startswith("slicer")
    assert "slicer" in entry["scm_url"].rsplit("/", 1)[-1].lower()


# ---------------------------------------------------------------------------------------
# icon and screenshots
# ---------------------------------------------------------------------------------------

def test_icon_and_screenshot_urls_are_tracked_images(cmake_text: str):
    icon, screenshots = _index_urls(cmake_text)
    assert icon, "the index's checker finds no EXTENSION_ICONURL"
    assert screenshots, "the index's checker finds no EXTENSION_SCREENSHOTURLS"
    assert icon.endswith(".png"), "the extension icon is a PNG"
    problems = _url_problems([icon, *screenshots], _tracked_files())
    assert problems == []


def test_url_check_finds_bad_urls(tmp_path: Path):
    """The URL check above fails on a foreign URL, an untracked file and a wrong image."""
    (tmp_path / "fake.png").write_bytes(b"GIF89a not a png")
    assert _url_problems([RAW_PREFIX + "fake.png"], {"fake.png"}, tmp_path) == [
        f"{RAW_PREFIX}fake.png: fake.png is not a .png image"]
    tracked = {"LICENSE", "XRayToCT/Resources/Icons/XRayToCT.png"}
    bad = ["https://example.org/x.png", RAW_PREFIX + "docs/missing.png", RAW_PREFIX + "LICENSE",
           RAW_PREFIX + "XRayToCT/Resources/Icons/XRayToCT.png"]
    problems = _url_problems(bad, tracked)
    assert any("not under" in p for p in problems)
    assert any("missing.png is not a file tracked" in p for p in problems)
    assert any("LICENSE: not a .png" in p for p in problems)
    assert not any("XRayToCT.png" in p for p in problems)
    assert _index_urls('set(EXTENSION_SCREENSHOTURLS "a b") # x\n') == (None, ["a", "b"])
    # a space before ")" and the index's checker finds no screenshots
    assert _index_urls('set(EXTENSION_SCREENSHOTURLS "a b" )\n') == (None, [])


# ---------------------------------------------------------------------------------------
# supported Slicer and Python versions
# ---------------------------------------------------------------------------------------

def test_supported_slicer_versions_agree(cmake_text: str):
    description = " ".join(_cmake_set(cmake_text, "EXTENSION_DESCRIPTION").split())
    section = _supported_section(README.read_text(encoding="utf-8"))
    minimum = _minimum_slicer(description, "CMake description")
    assert _minimum_slicer(section, "README") == minimum
    python = SLICER_PYTHON[minimum]
    below = max(v for v in SLICER_PYTHON if v < minimum)
    for text in (description, section):
        assert f"Python {python[0]}.{python[1]}" in text
        assert f"Slicer {below[0]}.{below[1]}" in text and "not supported" in text
        assert f"Python {SLICER_PYTHON[below][0]}.{SLICER_PYTHON[below][1]}" in text


def test_requires_python_matches_the_supported_slicers(cmake_text: str):
    spec = _requires_python()
    minimum = _minimum_slicer(_cmake_set(cmake_text, "EXTENSION_DESCRIPTION"), "CMake description")
    python = SLICER_PYTHON[minimum]
    assert spec.contains(f"{python[0]}.{python[1]}"), "the minimum Slicer's Python is refused"
    for slicer, py in SLICER_PYTHON.items():
        if slicer < minimum:
            assert not spec.contains(f"{py[0]}.{py[1]}"), f"Slicer {slicer}'s Python is allowed"
    assert spec.contains("3.10") and not spec.contains("3.9")


def test_readme_python_range_matches_pyproject():
    section = _supported_section(README.read_text(encoding="utf-8"))
    m = re.search(r"Python 3\.(\d+)[–-]3\.(\d+)", section)
    assert m, "README: the library's Python range (3.X–3.Y) is not stated"
    low, high = int(m.group(1)), int(m.group(2))
    spec = _requires_python()
    assert spec.contains(f"3.{low}") and spec.contains(f"3.{high}")
    assert not spec.contains(f"3.{low - 1}") and not spec.contains(f"3.{high + 1}")

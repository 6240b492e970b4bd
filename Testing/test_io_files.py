"""Tests of XRayToCTLib.io.files: the one JSON policy and the one atomic writer."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from XRayToCTLib import io
from XRayToCTLib.errors import InputError
from XRayToCTLib.geometry import Volume, default_biplanar
from XRayToCTLib.io import files


# ======================================================================================
# JSON: non-finite -> null, numpy -> Python, always valid JSON
# ======================================================================================
@dataclasses.dataclass
class _Point:
    x: float
    tags: tuple


def test_json_policy_non_finite_become_null():
    data = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan, "ok": 1.5,
            "np_inf": np.float32(np.inf), "np_nan": np.float64(np.nan),
            "array": np.array([1.0, np.inf, -np.inf, np.nan]),
            "nested": [{"deep": (math.nan, 2)}]}
    out = io.to_jsonable(data)
    assert out == {"inf": None, "-inf": None, "nan": None, "ok": 1.5, "np_inf": None,
                   "np_nan": None, "array": [1.0, None, None, None],
                   "nested": [{"deep": [None, 2]}]}
    text = io.json_text(data)
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == out
    # the parser that refuses non-standard JSON accepts it
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))


def test_json_policy_types():
    geometry = default_biplanar()["ap"]
    out = io.to_jsonable({
        1: np.int64(3), "f32": np.float32(0.5), "b": np.bool_(True), "u8": np.uint8(7),
        "arr": np.arange(4, dtype=np.int16).reshape(2, 2), "path": Path("/tmp/x.nii.gz"),
        "tuple": (1, 2), "set": {3, 1, 2}, "dataclass": _Point(1.0, ("a",)),
        "geometry": geometry, "other": object, "none": None, "text": "é"})
    assert out["1"] == 3 and type(out["1"]) is int
    assert out["f32"] == 0.5 and type(out["f32"]) is float
    assert out["b"] is True and out["u8"] == 7 and type(out["u8"]) is int
    assert out["arr"] == [[0, 1], [2, 3]] and out["path"] == "/tmp/x.nii.gz"
    assert out["tuple"] == [1, 2] and out["set"] == [1, 2, 3]
    assert out["dataclass"] == {"x": 1.0, "tags": ["a"]}
    assert out["geometry"] == json.loads(json.dumps(geometry.to_dict()))
    assert out["other"] == str(object) and out["none"] is None and out["text"] == "é"
    json.dumps(out, allow_nan=False)  # plain JSON types only


def test_write_json_is_valid_json(tmp_path):
    path = io.write_json(tmp_path / "sub" / "x.json", {"psnr": math.inf, "n": np.int32(2)})
    assert path == tmp_path / "sub" / "x.json"
    text = path.read_text()
    assert text.endswith("\n") and json.loads(text) == {"psnr": None, "n": 2}


def test_volume_header_metadata_follows_the_policy(tmp_path):
    vol = Volume(np.full((3, 4, 5), -1000.0, np.float32), metadata={
        "psnr": math.inf, "score": np.float32(0.25), "shape": np.array([3, 4, 5])})
    back = io.read_volume(io.write_volume(vol, tmp_path / "v.nrrd"))
    assert back.metadata["psnr"] is None and back.metadata["score"] == 0.25
    assert back.metadata["shape"] == [3, 4, 5]


# ======================================================================================
# the atomic writer
# ======================================================================================
def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("mode", ["text", "binary", "path"])
def test_atomic_write_failure_leaves_nothing(tmp_path, mode):
    target = tmp_path / "out.dat"

    def broken(dest):
        if mode == "path":
            Path(dest).write_bytes(b"partial")
            Path(dest).with_suffix(".raw").write_bytes(b"detached")
        else:
            dest.write(b"partial" if mode == "binary" else "partial")
        raise RuntimeError("disk full")

    kw = {"binary": mode == "binary", "to_path": mode == "path"}
    with pytest.raises(RuntimeError):
        io.atomic_write(target, broken, **kw)
    assert _names(tmp_path) == []  # no file where none existed, no temporary left
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        io.atomic_write(target, lambda dest: (_ for _ in ()).throw(KeyboardInterrupt()), **kw)
    assert _names(tmp_path) == ["out.dat"] and target.read_text() == "old"


def test_atomic_write_modes(tmp_path):
    assert io.atomic_write(tmp_path / "t.txt", lambda fh: fh.write("é\n")) == tmp_path / "t.txt"
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "é\n"
    io.atomic_write(tmp_path / "b.bin", lambda fh: fh.write(b"\0\1"), binary=True)
    assert (tmp_path / "b.bin").read_bytes() == b"\0\1"

    def header_and_data(dest: Path) -> None:  # a detached header: both files move into place
        dest.with_suffix(".raw").write_bytes(b"data")
        dest.write_text("header")
    io.atomic_write(tmp_path / "img.mhd", header_and_data, to_path=True)
    assert (tmp_path / "img.mhd").read_text() == "header" and (tmp_path / "img.raw").exists()
    # a folder replaces only an empty folder
    (tmp_path / "series").mkdir()
    io.atomic_write(tmp_path / "series", lambda d: (d.mkdir(), (d / "a").write_text("1")),
                    to_path=True)
    assert (tmp_path / "series" / "a").read_text() == "1"
    with pytest.raises(OSError):
        io.atomic_write(tmp_path / "series", lambda d: (d.mkdir(), (d / "b").write_text("2")),
                        to_path=True)
    assert _names(tmp_path / "series") == ["a"]
    # the writer has to produce the file
    with pytest.raises(OSError, match="produced no"):
        io.atomic_write(tmp_path / "none.txt", lambda d: None, to_path=True)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_atomic_write_permissions_and_folders(tmp_path):
    mask = os.umask(0o022)
    try:
        path = io.write_text(tmp_path / "new" / "deeper" / "p.txt", "x")  # folders created
    finally:
        os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o644  # not mkstemp's 0600
    with pytest.raises(InputError, match="does not exist"):
        io.atomic_write(tmp_path / "missing" / "q.txt", lambda fh: fh.write("x"),
                        create_parent=False)
    assert not (tmp_path / "missing").exists()


def test_small_helpers(tmp_path):
    assert files.extension(Path("A.NII.GZ")) == ".nii.gz" and files.extension("x.Nrrd") == ".nrrd"
    assert files.extension(Path("noext")) == ""
    assert files.one_line("line one\n  line two") == "line one line two"
    assert files.one_line("x" * 500).endswith("...") and len(files.one_line("x" * 500)) == 240
    with pytest.raises(InputError, match="no such file"):
        files.require_exists(tmp_path / "nothing")

"""Tests of XRayToCTLib.models.package: .safetensors model packages and the catalog."""
from __future__ import annotations

import json
import pickle
import re

import pytest
import torch

from XRayToCTLib import models
from XRayToCTLib.errors import InputError
from XRayToCTLib.models import package

torch.set_num_threads(1)

SMALL_GAN = {"image_size": 32, "output_size": 32, "stem_channels": 8, "growth_rate": 4,
             "encoder_blocks": [1, 2, 2, 1], "decoder_channels": [4, 4, 8, 8, 16],
             "decoder_blocks": [1, 1, 1, 1, 0], "fusion_blocks": [1, 1, 1, 1, 0],
             "intensity": "brain"}
SMALL_INR = {"image_size": 32, "output_size": 32, "stem_channels": 4,
             "encoder_channels": [8, 8], "hidden": 16, "chunk": 8192}
META = {"training_data": {"kind": "phantoms", "count": 3}, "validation": {"ssim": 0.5},
        "notes": "unit test"}


@pytest.mark.parametrize("name,config", [("x2ct_gan", SMALL_GAN), ("cnn_inr", SMALL_INR)])
def test_round_trip_identical_outputs(tmp_path, name, config):
    torch.manual_seed(0)
    m = models.build_model(name, config).eval()
    with torch.no_grad():  # make the weights differ from a fresh init
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = models.save_package(m, tmp_path / f"{name}.safetensors", metadata=META)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.safetensors"]  # no temp
    loaded, info = models.load_package(path)
    x = torch.rand(1, len(m.spec.views), 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), loaded(x))
    assert not loaded.training and loaded.spec == m.spec
    assert info["model"] == name and info["format"] == "xraytoct-model"
    assert info["training_data"] == META["training_data"] and info["notes"] == "unit test"
    assert info["validation"] == {"ssim": 0.5} and info["spec"]["views"] == list(m.spec.views)
    assert info["geometry"]["ap"]["sad"] == 1000.0 and "created" in info
    assert info["intensity"]["name"] == m.spec.intensity
    assert info["size"] == path.stat().st_size and len(info["sha256"]) == 64
    # every header value is a JSON-encoded string
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata()
    assert all(isinstance(v, str) for v in raw.values()) and json.loads(raw["model"]) == name


def test_fp16_halves_the_file(tmp_path):
    torch.manual_seed(0)
    m = models.build_model("x2ct_gan", SMALL_GAN).eval()
    a = models.save_package(m, tmp_path / "a.safetensors", metadata=META)
    b = models.save_package(m, tmp_path / "b.safetensors", metadata=META, dtype=torch.float16)
    assert b.stat().st_size < 0.6 * a.stat().st_size
    loaded, info = models.load_package(b)
    assert info["dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(1, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m(x), atol=2e-2, rtol=0)


def test_refuses_corrupt_foreign_and_pickle_files(tmp_path):
    m = models.build_model("cnn_inr", SMALL_INR)
    good = models.save_package(m, tmp_path / "m.safetensors", metadata=META)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated.safetensors"):
        models.load_package(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="not a safetensors"):
        models.load_package(garbage)
    # a pickle whose unpickling would leave a file behind: it must never be unpickled
    sentinel = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    pkl = tmp_path / "model.safetensors"
    pkl.write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.raises(InputError, match="model.safetensors"):
        models.load_package(pkl)
    torch_file = tmp_path / "ckpt.pt"
    torch.save(m.state_dict(), torch_file)
    with pytest.raises(InputError, match="ckpt.pt"):
        models.load_package(torch_file)
    assert not sentinel.exists()
    # a valid safetensors file that is not a package
    from safetensors.torch import save_file
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(InputError, match="not an XRayToCT model package"):
        models.load_package(foreign)
    # weights that do not fit the config
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(other), metadata=package._header(m.spec, {}, torch.float32))
    with pytest.raises(InputError, match="do not fit"):
        models.load_package(other)
    with pytest.raises(InputError, match="no such"):
        models.load_package(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="written by save_package"):
        models.save_package(m, tmp_path / "x.safetensors", metadata={"model": "x"})
    with pytest.raises(InputError, match="does not exist"):
        models.save_package(m, tmp_path / "nofolder" / "x.safetensors", metadata=META)


def test_catalog_resolution_and_sha_check(tmp_path):
    m = models.build_model("cnn_inr", SMALL_INR)
    (tmp_path / "pkgs").mkdir()
    path = models.save_package(m, tmp_path / "pkgs" / "inr.safetensors", metadata=META)
    entry = package.catalog_entry(path, name="inr-test", title="Test", description="unit test",
                                  catalog_dir=tmp_path)
    assert entry["file"] == "pkgs/inr.safetensors" and entry["views"] == ["ap", "lateral"]
    assert entry["output_size"] == 32 and entry["trained_on"] == META["training_data"]
    cat = tmp_path / "models.json"
    cat.write_text(json.dumps({"format_version": 1, "models": [entry]}))
    assert [e["name"] for e in models.catalog(cat)] == ["inr-test"]
    assert models.resolve_model("inr-test", catalog_path=cat) == path.resolve()
    assert models.resolve_model(str(path), catalog_path=cat) == path
    loaded, info = models.load_model("inr-test", catalog_path=cat)
    assert info["catalog"]["name"] == "inr-test" and info["sha256"] == entry["sha256"]
    # a replaced file fails the catalog's checksum, by name; as a plain file it still loads
    models.save_package(models.build_model("cnn_inr", SMALL_INR), path, metadata=META)
    with pytest.raises(InputError, match="SHA-256"):
        models.load_model("inr-test", catalog_path=cat)
    models.load_model(path, catalog_path=cat)
    with pytest.raises(InputError, match="unknown model 'nope'.*inr-test"):
        models.resolve_model("nope", catalog_path=cat)
    path.unlink()
    with pytest.raises(InputError, match="file is missing"):
        models.resolve_model("inr-test", catalog_path=cat)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        models.catalog(bad)
    assert models.catalog(tmp_path / "absent.json") == []
    # a top-level list is accepted too
    cat.write_text(json.dumps([entry]))
    assert models.catalog(cat)[0]["name"] == "inr-test"


def test_bundled_catalog_is_valid():
    """Every bundled model's file exists, has the catalog's size and SHA-256, and its header
    agrees with the entry (the catalog may be empty until trained models are committed)."""
    assert models.CATALOG_PATH.is_file()
    entries = models.catalog()
    assert isinstance(entries, list)
    assert len({e["name"] for e in entries}) == len(entries)
    for e in entries:
        f = models.resolve_model(e["name"])
        assert f.stat().st_size == e["size"] <= 25_000_000
        assert package.sha256_file(f) == e["sha256"]
        info = package.read_info(f)
        if e.get("kind", "reconstruction") == "reconstruction":
            assert info["spec"]["views"] == e["views"]
            assert info["spec"]["output_size"] == e["output_size"]
        else:  # a harmoniser (2D translation): its kind and image size
            assert info["spec"]["kind"] == info["kind"] == e["kind"]
            assert info["spec"]["image_size"] == e["image_size"]
        # no path of the machine that trained it, in the catalog or in the header
        header = {k: v for k, v in info.items() if k != "path"}  # path: where it was read from
        for text in (json.dumps(e), json.dumps(header, default=str)):
            assert not re.search(r'"(/|[A-Za-z]:\\\\)[^"]*"', text), e["name"]
        # what a user needs about the training data, not the development run's case ids
        trained = e["trained_on"]
        assert not package.DEVELOPMENT_KEYS & set(trained), e["name"]
        assert {"description", "sources", "settings", "split"} <= set(trained), e["name"]
        assert all(isinstance(trained["split"][k], int) for k in ("train", "val", "test"))
        header_record = package.user_training_record(info["training_data"])
        assert {k: v for k, v in trained.items() if k in header_record} == header_record


def test_catalog_entry_keeps_only_the_user_facing_training_record(tmp_path):
    """Case id lists, the dataset folder and absolute paths stay out of a catalog entry."""
    m = models.build_model("cnn_inr", SMALL_INR)
    record = {"kind": "xraytoct dataset", "size": 32, "description": "3 phantoms",
              "sources": {"ct_dir": "/home/someone/cts", "phantoms": 3,
                          "template": "C:\\data\\scct.nii.gz"},
              "settings": {"size": 32, "ct_dir": "/home/someone/cts"},
              "split": {"train": 2, "val": 1, "test": 0}, "settings_key": "abc",
              "train_cases": ["phantom-00000", "phantom-00001"], "path": "/home/someone/ds32"}
    path = models.save_package(m, tmp_path / "inr.safetensors",
                               metadata={**META, "training_data": record})
    entry = package.catalog_entry(path, name="t", title="T", description="d",
                                  catalog_dir=tmp_path)
    trained = entry["trained_on"]
    assert "train_cases" not in trained and "path" not in trained
    assert "settings_key" not in trained
    assert trained["split"] == {"train": 2, "val": 1, "test": 0}
    assert trained["sources"] == {"ct_dir": "cts", "phantoms": 3, "template": "scct.nii.gz"}
    assert trained["settings"]["ct_dir"] == "cts" and trained["description"] == "3 phantoms"
    assert not re.search(r'"(/|[A-Za-z]:\\\\)[^"]*"', json.dumps(entry))


def test_models_command_lists_the_bundled_catalog(capsys):
    """`xraytoct models --json` reads the catalog: every entry present, checksum ok."""
    from XRayToCTLib.cli import main
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [e["name"] for e in models.catalog()]
    for r in rows:
        assert r["present"] and r["sha256_ok"], r["name"]
        assert "train_cases" not in r["trained_on"] and "path" not in r["trained_on"]


def test_bundled_models_rebuild_from_their_config():
    """Every bundled package's stored config maps onto its class's typed arguments and
    rebuilds the same spec and state-dict layout; the loaded model runs (finite, in the
    intensity range, on the canonical grid)."""
    for e in models.catalog(kind="reconstruction"):
        m, info = models.load_model(e["name"])
        rebuilt = models.build_model(info["model"], info["config"])
        assert rebuilt.spec == m.spec and rebuilt.spec.config == info["config"]
        assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == \
            [(k, v.shape) for k, v in m.state_dict().items()]
        s, p = m.spec.output_size, m.spec.image_size
        x = models.normalize_views(torch.rand(1, len(m.spec.views), p, p,
                                              generator=torch.Generator().manual_seed(0)))
        with torch.no_grad():
            y = m(x)
        assert y.shape == (1, 1, s, s, s) and torch.isfinite(y).all()
        assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0

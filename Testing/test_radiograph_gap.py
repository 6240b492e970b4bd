"""benchmarks/radiograph_gap.py (issue 12 item 4): a tiny reconstruction model and harmoniser
(random weights) on a 2-case 32^3 dataset made by ``xraytoct prepare``: the table's shape,
the CSV, and the DRR row against what the evaluation engine gives on its own."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from XRayToCTLib import models
from XRayToCTLib.cli import main as xraytoct
from XRayToCTLib.evaluation import evaluate
from XRayToCTLib.models import package

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "radiograph_gap.py"
META = {"training_data": {"description": "none: random weights (a test model)"},
        "validation": {}}


def _load_script():
    spec = importlib.util.spec_from_file_location("radiograph_gap", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A 2-case test split at 32^3 (8 mm), a tiny X2CT-GAN (32^2 views, 32^3 output) and a
    tiny pix2pix harmoniser (32^2), both packaged."""
    root = tmp_path_factory.mktemp("gap")
    data = root / "ds"
    code = xraytoct(["prepare", "--out", str(data), "--phantoms", "2", "--size", "32",
                     "--pixels", "32", "--drr-spacing", "8", "--seed", "0", "--workers", "1"])
    assert code == 0
    torch.manual_seed(0)
    recon = models.build_model("x2ct_gan", {
        "image_size": 32, "output_size": 32, "output_spacing": 8.0,
        "stem_channels": 8, "growth_rate": 4, "encoder_blocks": [1, 1, 1],
        "decoder_channels": [4, 4, 8, 8], "decoder_blocks": [1, 1, 1, 0],
        "fusion_blocks": [1, 1, 1, 0]})
    with torch.no_grad():  # random weights, spread to the HU range (air below -500 HU), so
        recon.head[0].weight.mul_(30.0)  # that the evaluation engine takes them as HU
    harm = models.build_model("pix2pix", {"image_size": 32, "channels": [4, 8, 16],
                                          "strides": [2, 2]})
    return {"data": data, "root": root,
            "recon": package.save_package(recon, root / "tiny.safetensors", metadata=META),
            "harm": package.save_package(harm, root / "harm.safetensors", metadata=META)}


def test_table_rows_csv_and_drr_row_equal_evaluate(setup, capsys):
    gap = _load_script()
    out = setup["root"] / "out"
    code = gap.main(["--data", str(setup["data"]), "--out", str(out), "--models",
                     str(setup["recon"]), "--harmonizer", str(setup["harm"]), "--draws", "2",
                     "--seed", "3", "--threads", "1"])
    stdout = capsys.readouterr().out
    assert code == 0
    lines = [ln for ln in stdout.splitlines() if ln.startswith("|")]
    assert len(lines) == 2 + 4  # header, rule, drr / simulated / harmonised / gap closed
    assert all(ln.count("|") == len(gap.COLUMNS) + 4 for ln in lines)
    assert [ln.split("|")[2].strip() for ln in lines[2:]] == [
        "drr", "simulated", "harmonised", "gap closed by harmonisation"]
    with open(out / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    cases = sorted(json.loads((setup["data"] / "manifest.json").read_text())["split"]["test"])
    assert len(rows) == len(cases) * (1 + 2 * 2) * len(gap.COLUMNS)
    summary = json.loads((out / "summary.json").read_text())["summary"]["tiny"]
    assert summary["drr"]["n"] == len(cases) and summary["simulated"]["n"] == 2 * len(cases)
    # the simulated and harmonised inputs reach the model: their reconstructions differ
    assert summary["simulated"]["ssim/full"] != summary["harmonised"]["ssim/full"]
    # the DRR row is the evaluation engine's mean on the DRR reconstructions, scored against
    # the dataset's own CTs (32^3: the model's size)
    res = evaluate([out / "predictions" / "tiny" / "drr"], setup["data"], names=["m"],
                   windows=("full", "brain"), regions=("head",), metrics=("ssim", "psnr", "mae_hu"))
    for metric, window in gap.COLUMNS:
        want = np.mean([r["value"] for r in res.rows if (r["metric"], r["window"], r["region"])
                        == (metric, window, "head")])
        assert summary["drr"][f"{metric}/{window}"] == pytest.approx(want, rel=1e-6)
    closed = summary["gap_closed_percent"]["ssim/full"]
    d, s, h = (summary[k]["ssim/full"] for k in ("drr", "simulated", "harmonised"))
    assert closed == pytest.approx(100 * (h - s) / (d - s))
    # the physics draws are those `xraytoct pairs` makes: reproducible, different per draw
    a, b = gap.physics_draws(cases, 2, 3), gap.physics_draws(cases, 2, 3)
    assert a[cases[0]][0] == b[cases[0]][0] and a[cases[0]][0] != a[cases[0]][1]

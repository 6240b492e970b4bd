"""The XRayToCT module's background work in a separate process, on real MRML (slicer-core).

The Logic starts the ``xraytoct`` command in a process (``XRayToCTLib.process``), follows
its log, can kill it, and puts its outputs into the scene; the result is the one the
blocking, in-process form gives. Also: the self-test skips (not fails) without the Python
packages, and the module refuses, in one clear line, a Slicer whose Python is too old.
"""
from __future__ import annotations

import importlib.util
import io
import json
import sys
import time
import types
import unittest
from pathlib import Path

import numpy as np
import pytest

from test_slicer_files import MODULE_PY, _phantom_node, _stub_gui_layer, scene, xraytoct  # noqa: F401

torch = pytest.importorskip("torch")
from XRayToCTLib import mrml, process  # noqa: E402
from XRayToCTLib.errors import Cancelled, XRayToCTError  # noqa: E402
from XRayToCTLib.phantom import head_phantom  # noqa: E402

MODEL = "cnn_inr_phantom64"


@pytest.fixture
def head(scene):  # noqa: F811
    """A 32^3 phantom head (8 mm voxels) in the scene, posed (not the canonical frame)."""
    return _phantom_node(scene, head_phantom(size=32, spacing=8.0, seed=3), "Head")


def _wait(task, seconds: float = 180.0):
    deadline = time.time() + seconds
    while not task.done:
        assert time.time() < deadline, f"{task.name} did not end: {task.process.output[-2000:]}"
        time.sleep(0.05)
    return task.result()


def test_parse_progress_reads_the_command_lines():
    assert process.parse_progress("reconstruct:  45% running cnn_inr on cpu") == (0.45, "running cnn_inr on cpu")
    assert process.parse_progress("train: 100%") == (1.0, "")
    assert process.parse_progress("error: no such file") is None
    assert process.parse_progress("wrote sct.nrrd (SYNTHETIC CT, not for diagnosis)") is None


def test_reconstruction_in_a_process_gives_the_in_process_sct(xraytoct, scene, head):  # noqa: F811
    """startReconstruction runs ``xraytoct reconstruct`` in another process (the template
    that ships with the module registers the CT); its sCT node, DRR nodes and scores are those
    of the blocking in-process form, on the CT's grid."""
    logic = xraytoct.XRayToCTLogic()
    task = logic.startReconstruction(None, None, modelName=MODEL, device="cpu", ctVolumeNode=head)
    assert isinstance(task, process.CommandTask) and task.folder.is_dir()
    seen = set()
    deadline = time.time() + 180
    while not task.done and time.time() < deadline:
        seen.add(task.message)
        time.sleep(0.05)
    node = task.result()
    assert not task.folder.exists()  # the temporary folder is removed
    assert task.fraction == 1.0 and any("registration" in m for m in seen), seen
    assert node.GetName() == "Head sCT (synthetic)" and node.GetAttribute(mrml.ATTRIBUTE_SYNTHETIC) == "true"
    drrs = [scene.GetNodeByID(i) for i in node.GetAttribute(mrml.ATTRIBUTE_INPUTS).split()]
    assert len(drrs) == 2 and all(logic.isDrrOf(n, head) for n in drrs)
    info = mrml.consistency_of(node)
    assert 0.5 < info["mean"]["ssim"] <= 1.0

    blocking = logic.reconstruct(None, None, modelName=MODEL, device="cpu", ctVolumeNode=head)
    a, b = mrml.volume_from_node(node), mrml.volume_from_node(blocking)
    np.testing.assert_allclose(a.index_to_lps(), mrml.volume_from_node(head).index_to_lps(), atol=1e-6)
    np.testing.assert_allclose(a.index_to_lps(), b.index_to_lps(), atol=1e-6)
    # the file holds whole HU; the registration's multi-threaded sums differ a little per run
    difference = np.abs(a.array - b.array)
    assert difference.mean() <= 0.5 and difference.max() <= 10.0, (difference.mean(), difference.max())
    assert mrml.consistency_of(blocking)["mean"]["ssim"] == pytest.approx(info["mean"]["ssim"], abs=1e-3)


def test_drrs_in_a_process_match_the_in_process_ones(xraytoct, scene, head):  # noqa: F811
    logic = xraytoct.XRayToCTLogic()
    nodes = _wait(logic.startSynthesizeDrrs(head, modelName=MODEL, device="cpu"))
    direct = logic.synthesizeDrrs(head, modelName=MODEL, device="cpu")
    assert set(nodes) == set(direct) == {"ap", "lateral"}
    for view in nodes:
        a, b = mrml.radiograph_from_node(nodes[view]), mrml.radiograph_from_node(direct[view])
        np.testing.assert_allclose(mrml._world_ijk_to_ras(nodes[view]), mrml._world_ijk_to_ras(direct[view]),
                                   atol=1e-6)
        np.testing.assert_allclose(a.array, b.array, rtol=1e-4, atol=1e-4 * float(b.array.max()))
        np.testing.assert_allclose(nodes[view].GetSpacing(), direct[view].GetSpacing())
        assert logic.isDrrOf(nodes[view], head)
    # into given nodes
    again = _wait(logic.startSynthesizeDrrs(head, nodes["ap"], nodes["lateral"], modelName=MODEL, device="cpu"))
    assert again["ap"] is nodes["ap"] and again["lateral"] is nodes["lateral"]


def test_cancel_kills_the_process_and_leaves_the_scene(xraytoct, scene, head):  # noqa: F811
    logic = xraytoct.XRayToCTLogic()
    before = scene.GetNumberOfNodes()
    task = logic.startReconstruction(None, None, modelName=MODEL, device="cpu", ctVolumeNode=head)
    with pytest.raises(RuntimeError, match="still running"):
        task.result()
    task.cancel()
    assert task.done and task.process.returncode not in (None, 0) and task.cancelled
    with pytest.raises(Cancelled):
        task.result()
    assert scene.GetNumberOfNodes() == before and not task.folder.exists()


def test_a_closed_scene_gets_no_result(xraytoct, scene, head):  # noqa: F811
    """The scene is closed while the process runs: the result is Cancelled, nothing is written."""
    logic = xraytoct.XRayToCTLogic()
    task = logic.startSynthesizeDrrs(head, modelName=MODEL, device="cpu")
    scene.Clear(0)
    with pytest.raises(Cancelled, match="scene was closed"):
        _wait(task)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


def test_a_failing_command_reports_its_error_line(xraytoct, scene, head, tmp_path):  # noqa: F811
    logic = xraytoct.XRayToCTLogic()
    bad = tmp_path / "not_a_model.safetensors"
    bad.write_bytes(b"not a model")
    task = logic.startReconstruction(None, None, modelName=str(bad), device="cpu", ctVolumeNode=head,
                                     register=False)
    with pytest.raises(XRayToCTError, match="not_a_model.safetensors.*not a safetensors model package"):
        _wait(task)


def test_compare_in_a_process_gives_the_in_process_table(xraytoct, scene):  # noqa: F811
    phantom = head_phantom(size=32, spacing=8.0, seed=0)
    gt = _phantom_node(scene, phantom, "GT")
    sct = _phantom_node(scene, phantom.with_array(phantom.array + 20.0), "sCT")
    logic = xraytoct.XRayToCTLogic()
    result = _wait(logic.startCompare(sct, gt, showLayout=False))
    direct = logic.compare(sct, gt, showLayout=False)
    values = {(r["metric"], r["window"], r["region"]): r["value"] for r in mrml.metrics_from_table(result["table"])}
    for row in direct["rows"]:
        assert values[(row["metric"], row["window"], row["region"])] == pytest.approx(row["value"], rel=1e-5)
    np.testing.assert_allclose(mrml.volume_from_node(result["difference"]).array, 20.0, atol=1e-3)
    assert result["difference"].GetAttribute(mrml.ATTRIBUTE_KIND) == mrml.KIND_DIFFERENCE


def test_self_test_skips_without_the_packages(xraytoct, scene, monkeypatch):  # noqa: F811
    """Without PyTorch the self-test loads the sample and reports the rest skipped: under a
    unittest runner (ctest) as skipped, under Reload and Test (runTest called directly) with a
    message, never as a failure."""
    import slicer
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(xraytoct.XRayToCTLogic, "missingDependencies", staticmethod(lambda: ["torch"]))
    result = unittest.TextTestRunner(stream=io.StringIO()).run(xraytoct.XRayToCTTest())
    assert result.wasSuccessful() and len(result.skipped) == 1 and "torch" in result.skipped[0][1]
    shown = []
    test = xraytoct.XRayToCTTest()
    monkeypatch.setattr(test, "delayDisplay", lambda message, msec=0: shown.append(message))
    test.runTest()  # Reload and Test: no exception
    assert any(m.startswith("Skipped:") and "torch" in m for m in shown)


def test_module_refuses_an_old_python_in_one_line(monkeypatch):
    """Slicer 5.8 bundles Python 3.9: the module says which Slicer it needs, and loads nothing."""
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the slicer-core wheel (MRML) is not installed")
    _stub_gui_layer(monkeypatch)
    monkeypatch.setattr(sys, "version_info", (3, 9, 10, "final", 0))
    spec = importlib.util.spec_from_file_location("_XRayToCT_old_python", MODULE_PY)
    with pytest.raises(ImportError, match=r"needs 3D Slicer 5\.10 or later \(Python 3\.10 or later\)"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_command_process_reads_its_log_without_a_thread(tmp_path):
    """The log is read at each poll (lines split across reads are joined); the process group
    is killed by cancel."""
    command = process.CommandProcess(["models"], tmp_path / "log.txt")
    assert command.wait(120) == 0
    assert any("cnn_inr" in line for line in command.new_lines()) and command.new_lines() == []
    assert Path(command.log).is_file() and command.failure().startswith("xraytoct models stopped")


def test_simulated_radiographs_in_a_process(xraytoct, scene, head):  # noqa: F811
    """Simulate (issue 12) from the panel: realistic radiographs of the CT at the model's
    geometry, as radiograph nodes of their own (not the CT's DRRs)."""
    logic = xraytoct.XRayToCTLogic()
    nodes = _wait(logic.startSimulate(head, modelName=MODEL, device="cpu", seed=1))
    assert set(nodes) == {"ap", "lateral"}
    drrs = logic.synthesizeDrrs(head, modelName=MODEL, device="cpu")
    for view, node in nodes.items():
        assert node.GetName() == f"Head simulated {xraytoct.VIEW_LABELS[view]}"
        assert node.GetAttribute(mrml.ATTRIBUTE_VIEW) == view and not logic.isDrrOf(node, head)
        simulated, drr = mrml.radiograph_from_node(node), mrml.radiograph_from_node(drrs[view])
        assert simulated.array.shape == drr.array.shape  # the model's detector
        assert simulated.geometry.to_dict() == drr.geometry.to_dict()
        assert not np.allclose(simulated.array, drr.array)


def test_harmonize_each_checked_view_in_a_process(xraytoct, scene, tmp_path):  # noqa: F811
    """Harmonize (issue 12): a radiograph node is translated by a harmoniser package into a new
    node with the same view and geometry; DRRs are not offered for harmonisation."""
    from XRayToCTLib.geometry import Radiograph, default_biplanar
    from XRayToCTLib.models import package
    from test_pix2pix import META, tiny_pix2pix
    harmonizer = package.save_package(tiny_pix2pix(32), tmp_path / "tiny_pix2pix.safetensors", metadata=META)
    geometry = default_biplanar(pixels=32)["ap"]
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "AP X-ray")
    mrml.update_node_from_radiograph(node, Radiograph(image, geometry.pixel_spacing, geometry), "ap")
    logic = xraytoct.XRayToCTLogic()
    out = _wait(logic.startHarmonize(node, str(harmonizer), view="ap", device="cpu"))
    assert out.GetName() == "AP X-ray harmonised" and out.GetAttribute(mrml.ATTRIBUTE_VIEW) == "ap"
    before, after = mrml.radiograph_from_node(node), mrml.radiograph_from_node(out)
    assert after.array.shape == before.array.shape and not np.allclose(after.array, before.array)
    assert after.geometry.to_dict() == before.geometry.to_dict()
    parameters = types.SimpleNamespace(harmonizerName=str(harmonizer), apVolume=node, lateralVolume=None,
                                       harmonizeAp=True, harmonizeLateral=True)
    assert logic.harmonizeProblem(parameters) is None
    node.SetAttribute(mrml.ATTRIBUTE_KIND, mrml.KIND_DRR)
    assert "DRR" in logic.harmonizeProblem(parameters)


def test_diffusion_samples_give_an_uncertainty_overlay_and_compare_reports_the_spread(xraytoct, scene, tmp_path):  # noqa: F811
    """Samples (issue 11) from the panel: a diffusion package's mean sCT, its uncertainty map
    as a colour overlay linked from the sCT node, and Compare's spread rows."""
    from XRayToCTLib.drr import DRR
    from XRayToCTLib.models import package
    from test_diffusion import META, tiny_diffusion
    model = tiny_diffusion()
    path = package.save_package(model, tmp_path / "tiny_diffusion.safetensors", metadata=META)
    ct = head_phantom(32, 8.0, seed=2, pose=False)
    drrs = DRR({v: model.spec.projection(v) for v in model.spec.views}).render(ct)
    nodes = {}
    for view, radiograph in drrs.items():
        nodes[view] = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{view} X-ray")
        mrml.update_node_from_radiograph(nodes[view], radiograph, view)
    logic = xraytoct.XRayToCTLogic()
    sct = _wait(logic.startReconstruction(nodes["ap"], nodes["lateral"], modelName=str(path), device="cpu",
                                          samples=3, seed=5))
    spread = mrml.uncertainty_of(sct)
    assert spread is not None and spread.GetAttribute(mrml.ATTRIBUTE_KIND) == mrml.KIND_UNCERTAINTY
    assert spread.GetAttribute(mrml.ATTRIBUTE_SYNTHETIC) == "true"
    assert spread.GetDisplayNode().GetColorNodeID() == mrml.uncertainty_color_node(scene).GetID()
    a, b = mrml.volume_from_node(spread), mrml.volume_from_node(sct)
    np.testing.assert_allclose(a.index_to_lps(), b.index_to_lps(), atol=1e-6)
    assert a.array.min() >= 0 and a.array.max() > 0
    info = json.loads(sct.GetAttribute(mrml.ATTRIBUTE_INFO))
    assert info["sampler"]["samples"] == 3 and "mean_sd_head_hu" in info["uncertainty"]
    # the same seed in this process gives the same mean
    again = logic.reconstruct(nodes["ap"], nodes["lateral"], modelName=str(path), device="cpu", samples=3, seed=5)
    assert np.abs(mrml.volume_from_node(again).array - b.array).max() <= 1.0  # the file holds whole HU
    gt = _phantom_node(scene, ct.with_array(ct.array), "GT")
    result = logic.compare(sct, gt, showLayout=False)
    metrics = {r["metric"] for r in result["rows"]}
    assert {"spread_hu", "spread_error_spearman"} <= metrics
    assert "Uncertainty: mean spread" in logic.metricsSummary(result["rows"])


def test_reconstruct_with_a_harmoniser_from_the_console_and_in_a_process(xraytoct, scene, tmp_path):  # noqa: F811
    """``harmonize=`` (issue 12: reconstruct --harmonize from the console) translates each
    radiograph first, in this process and in the background process alike, and says so."""
    from XRayToCTLib import models
    from XRayToCTLib.drr import DRR
    from XRayToCTLib.models import package
    from test_pix2pix import META, tiny_pix2pix
    harmonizer = package.save_package(tiny_pix2pix(64), tmp_path / "tiny_pix2pix.safetensors", metadata=META)
    spec = models.load_model(MODEL)[0].spec
    drrs = DRR({v: spec.projection(v) for v in spec.views}).render(head_phantom(64, 4.0, seed=2, pose=False))
    nodes = {}
    for view, radiograph in drrs.items():
        nodes[view] = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{view} X-ray")
        mrml.update_node_from_radiograph(nodes[view], radiograph, view)
    logic = xraytoct.XRayToCTLogic()
    plain = logic.reconstruct(nodes["ap"], nodes["lateral"], modelName=MODEL, device="cpu")
    direct = logic.reconstruct(nodes["ap"], nodes["lateral"], modelName=MODEL, device="cpu",
                               harmonize=str(harmonizer))
    background = _wait(logic.startReconstruction(nodes["ap"], nodes["lateral"], modelName=MODEL, device="cpu",
                                                 harmonize=str(harmonizer)))
    for node in (direct, background):
        assert json.loads(node.GetAttribute(mrml.ATTRIBUTE_INFO))["harmonize"]["model"]
    a, b = mrml.volume_from_node(direct).array, mrml.volume_from_node(background).array
    assert np.abs(a - b).max() <= 1.0 and not np.allclose(a, mrml.volume_from_node(plain).array, atol=5.0)

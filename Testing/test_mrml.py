"""XRayToCTLib.mrml on real MRML (the slicer-core wheel: Slicer's MRML without Qt).

Geometry round trips on oblique volumes, radiograph nodes with their projection geometry,
DRR synthesis into nodes, sCT labelling, the compare layout's description and the view
nodes Slicer's layout logic makes from it, linked slice composite nodes, the difference
volume and its colours, and the metrics table's contents.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the slicer-core wheel (MRML) is not installed", allow_module_level=True)
vtk = pytest.importorskip("vtk")

from XRayToCTLib import mrml  # noqa: E402
from XRayToCTLib.geometry import ProjectionGeometry, Radiograph, Volume, default_biplanar, rotation_matrix  # noqa: E402


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    # what Slicer's application logic gives every scene: the slice orientation presets
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    return scene


def _oblique(shape=(5, 6, 7), spacing=(0.7, 0.8, 2.5), angles=(10, -20, 30), flip=False, seed=0):
    rng = np.random.default_rng(seed)
    direction = rotation_matrix(angles)
    if flip:  # a left-handed grid (k axis reversed), as some DICOM series are
        direction = direction @ np.diag([1.0, 1.0, -1.0])
    return Volume((rng.normal(size=shape) * 300).astype(np.float32), spacing, (10.0, -20.0, 30.0), direction)


def _ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


# ---------------------------------------------------------------------------------------
# volumes
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("flip", [False, True], ids=["right-handed", "left-handed"])
def test_volume_round_trip_oblique(scene, flip):
    volume = _oblique(flip=flip)
    node = mrml.add_volume_node(scene, volume, "oblique")
    assert node.GetScene() is scene and node.GetDisplayNode() is not None
    # the node's matrix is the library's one LPS->RAS conversion of the same geometry
    np.testing.assert_allclose(_ijk_to_ras(node), volume.ijk_to_ras(), atol=1e-12)
    # voxel (i, j, k) is at the same physical point: RAS = diag(-1, -1, 1) LPS
    ijk = np.array([4.0, 2.0, 3.0, 1.0])
    lps = volume.index_to_lps() @ ijk
    np.testing.assert_allclose((_ijk_to_ras(node) @ ijk)[:3], lps[:3] * (-1, -1, 1), atol=1e-9)
    back = mrml.volume_from_node(node)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.index_to_lps(), volume.index_to_lps(), atol=1e-9)
    np.testing.assert_allclose(back.spacing, volume.spacing, rtol=1e-12)
    assert back.metadata["mrml_node_id"] == node.GetID()


def test_volume_keeps_dtype_and_orientation_of_axes(scene):
    array = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)  # [k, j, i]
    node = mrml.add_volume_node(scene, Volume(array, (1.0, 2.0, 3.0)), "ramp")
    assert node.GetImageData().GetDimensions() == (4, 3, 2)  # (i, j, k)
    assert node.GetImageData().GetScalarComponentAsDouble(3, 0, 0, 0) == 3.0  # i fastest
    assert node.GetImageData().GetScalarComponentAsDouble(0, 1, 1, 0) == 16.0
    np.testing.assert_array_equal(mrml.volume_from_node(node, dtype=np.int16).array, array)


def test_volume_under_linear_transform(scene):
    volume = _oblique()
    node = mrml.add_volume_node(scene, volume, "moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = vtk.vtkMatrix4x4()
    m.SetElement(0, 3, 5.0)
    m.SetElement(2, 3, -3.0)  # RAS shift
    transform.SetMatrixTransformToParent(m)
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = mrml.volume_from_node(node)
    np.testing.assert_allclose(np.asarray(moved.origin) - volume.origin, (-5.0, 0.0, -3.0), atol=1e-9)  # LPS
    # writing a world-space volume back drops the parent transform (no double shift)
    mrml.update_node_from_volume(node, moved)
    assert node.GetParentTransformNode() is None
    np.testing.assert_allclose(mrml.volume_from_node(node).index_to_lps(), moved.index_to_lps(), atol=1e-9)


def test_volume_errors(scene):
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="no image data"):
        mrml.volume_from_node(empty)
    with pytest.raises(ValueError, match="no volume"):
        mrml.volume_from_node(None)


# ---------------------------------------------------------------------------------------
# radiographs
# ---------------------------------------------------------------------------------------

def test_radiograph_round_trip_with_geometry(scene):
    geometry = default_biplanar(isocenter=(3.0, -4.0, 5.0), pixels=24)["lateral"]
    array = np.random.default_rng(1).random(geometry.pixels).astype(np.float32)
    radiograph = Radiograph(array, geometry=geometry, metadata={"kind": "DRR", "view": "lateral"})
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "lat")
    mrml.update_node_from_radiograph(node, radiograph, "lateral", source_node=ct)
    assert node.GetAttribute(mrml.ATTRIBUTE_VIEW) == "lateral"
    assert mrml.is_drr_of(node, ct) and not mrml.is_drr_of(node, node)
    assert mrml.source_ct_of(node) is ct
    back = mrml.radiograph_from_node(node)
    np.testing.assert_array_equal(back.array, array)
    assert back.geometry == geometry
    assert back.pixel_spacing == pytest.approx(geometry.pixel_spacing)
    assert back.metadata["view"] == "lateral"
    # pixel (row r, col c) = voxel (i=c, j=r, 0) sits at the detector pixel centre
    centers = geometry.pixel_centers()
    for r, c in ((0, 0), (5, 17), (23, 23)):
        ras = _ijk_to_ras(node) @ np.array([c, r, 0, 1.0])
        np.testing.assert_allclose(ras[:3] * (-1, -1, 1), centers[r, c], atol=1e-9)


def test_radiograph_without_geometry(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "xray")
    mrml.update_node_from_radiograph(node, Radiograph(np.ones((4, 6), np.float32), (0.2, 0.3)), "ap")
    back = mrml.radiograph_from_node(node)
    assert back.geometry is None and back.array.shape == (4, 6)
    assert back.pixel_spacing == pytest.approx((0.2, 0.3))
    assert mrml.radiograph_from_node(node, view="lateral").metadata["view"] == "lateral"
    stack = mrml.add_volume_node(scene, Volume(np.zeros((3, 4, 6), np.float32)), "stack")
    with pytest.raises(ValueError, match="not a radiograph"):
        mrml.radiograph_from_node(stack)
    node.SetAttribute(mrml.ATTRIBUTE_GEOMETRY, '{"sad": -1}')
    with pytest.raises(ValueError, match="not a valid projection geometry"):
        mrml.radiograph_from_node(node)


def test_synthesize_drrs_at_given_geometry(scene):
    pytest.importorskip("torch")
    from XRayToCTLib import drr
    from XRayToCTLib.phantom import head_phantom

    phantom = head_phantom(size=32, spacing=8.0, seed=0)
    phantom = Volume(phantom.array, phantom.spacing, np.asarray(phantom.origin) + (7.0, 0.0, -5.0))
    ct = mrml.add_volume_node(scene, phantom, "CT")
    model_geometry = {"ap": ProjectionGeometry.preset("ap", pixels=(16, 16), detector_size=(380.0, 380.0))}
    nodes = mrml.synthesize_drrs(ct, geometries=model_geometry, device="cpu")
    assert list(nodes) == ["ap"]
    node = nodes["ap"]
    back = mrml.radiograph_from_node(node)
    # the model's detector, moved to the CT's centre
    assert back.geometry.pixels == (16, 16) and back.geometry.detector_size == (380.0, 380.0)
    np.testing.assert_allclose(back.geometry.isocenter, phantom.center, atol=1e-9)
    expected = drr.DRR({"ap": model_geometry["ap"].centered_on(phantom.center)}).render(
        phantom, device="cpu")["ap"]
    np.testing.assert_allclose(back.array, expected.array, rtol=1e-5, atol=1e-6)
    assert mrml.is_drr_of(node, ct) and node.GetName() == "CT DRR AP"
    # rendering again reuses the node
    again = mrml.synthesize_drrs(ct, geometries=model_geometry, device="cpu", output_nodes={"ap": node})
    assert again["ap"] is node


# ---------------------------------------------------------------------------------------
# synthetic CT nodes
# ---------------------------------------------------------------------------------------

def test_sct_node_is_labelled_synthetic(scene):
    ct = mrml.add_volume_node(scene, _oblique(), "Head CT")
    sct_volume = _oblique(seed=1)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", mrml.sct_node_name(ct.GetName()))
    consistency = {"views": {"ap": {"ssim": 0.91, "psnr": 27.5}}, "mean": {"ssim": 0.91, "psnr": 27.5}}
    mrml.update_node_from_sct(node, sct_volume, model="x2ct_gan", consistency=consistency, source_node=ct,
                              input_nodes=[ct, None], info={"device": "cpu", "score": np.float32(1.5)})
    assert node.GetName() == "Head CT sCT (synthetic)"
    assert node.GetAttribute(mrml.ATTRIBUTE_SYNTHETIC) == "true"
    assert node.GetAttribute(mrml.ATTRIBUTE_KIND) == mrml.KIND_SCT
    assert node.GetAttribute(mrml.ATTRIBUTE_MODEL) == "x2ct_gan"
    assert "not for diagnosis" in node.GetDescription()
    assert mrml.consistency_of(node) == consistency
    assert json.loads(node.GetAttribute(mrml.ATTRIBUTE_INFO)) == {"device": "cpu", "score": 1.5}
    assert node.GetAttribute(mrml.ATTRIBUTE_INPUTS) == ct.GetID()
    assert mrml.source_ct_of(node) is ct
    display = node.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == (2000.0, 0.0)
    np.testing.assert_allclose(mrml.volume_from_node(node).index_to_lps(), sct_volume.index_to_lps(), atol=1e-9)


# ---------------------------------------------------------------------------------------
# compare layout, view links
# ---------------------------------------------------------------------------------------

def _layout(scene):
    logic = slicer.vtkMRMLLayoutLogic()
    logic.SetMRMLScene(scene)
    return logic, logic.GetLayoutNode()


def test_compare_layout_description():
    root = ET.fromstring(mrml.compare_layout_description())
    assert root.tag == "layout" and root.get("type") == "vertical"
    rows = [item.find("layout") for item in root.findall("item")]
    assert [r.get("type") for r in rows] == ["horizontal", "horizontal"]
    seen = {}
    for row_name, row in zip(("sct", "gt"), rows):
        for item, orientation in zip(row.findall("item"), ("Axial", "Sagittal", "Coronal")):
            view = item.find("view")
            props = {p.get("name"): p.text for p in view.findall("property")}
            assert view.get("class") == "vtkMRMLSliceNode"
            assert props["orientation"] == orientation
            assert props["viewgroup"] == str(mrml.COMPARE_VIEW_GROUP)
            seen[(row_name, orientation)] = view.get("singletontag")
    assert seen == {key: value[0] for key, value in mrml.COMPARE_VIEWS.items()}


def test_register_compare_layout_creates_the_views(scene):
    logic, layout_node = _layout(scene)
    assert mrml.register_compare_layout(layout_node, show=False) == mrml.COMPARE_LAYOUT_ID
    assert layout_node.IsLayoutDescription(mrml.COMPARE_LAYOUT_ID)
    assert layout_node.GetViewArrangement() != mrml.COMPARE_LAYOUT_ID
    assert layout_node.GetLayoutDescription(mrml.COMPARE_LAYOUT_ID) == mrml.compare_layout_description()
    mrml.register_compare_layout(layout_node)  # again: updated, and shown
    assert layout_node.GetViewArrangement() == mrml.COMPARE_LAYOUT_ID
    slice_nodes = {n.GetLayoutName(): n for n in (scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
                                                  for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")))}
    for (row, orientation), (name, label, _color) in mrml.COMPARE_VIEWS.items():
        assert name in slice_nodes, f"the layout logic made no slice node for {name}"
        node = slice_nodes[name]
        assert node.GetOrientation() == orientation
        assert node.GetLayoutLabel() == label
        assert node.GetViewGroup() == mrml.COMPARE_VIEW_GROUP


@pytest.fixture
def compare_scene(scene):
    """A scene with the compare layout shown, an sCT, a ground truth on another grid and
    their difference."""
    _logic, layout_node = _layout(scene)
    mrml.register_compare_layout(layout_node)
    ramp = np.add.outer(np.arange(8.0), np.zeros((8, 8))).astype(np.float32) * 10.0  # 10 HU per k
    gt = mrml.add_volume_node(scene, Volume(ramp, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0)), "GT")
    sct = mrml.add_volume_node(scene, Volume(ramp + 25.0, (2.0, 2.0, 2.0), (0.0, 0.0, 2.0)), "sCT")
    diff = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "diff")
    mrml.update_difference_node(diff, sct, gt, range_hu=100.0)
    return scene, sct, gt, diff


def test_difference_volume(compare_scene):
    scene, sct, gt, diff = compare_scene
    values = mrml.volume_from_node(diff)
    # on the sCT grid; the sCT sits 2 mm (one slice, 10 HU) higher: 25 - 10 = 15 HU where they overlap
    np.testing.assert_allclose(values.index_to_lps(), mrml.volume_from_node(sct).index_to_lps())
    np.testing.assert_allclose(values.array[:-1], 15.0, atol=1e-4)
    # beyond the ground truth's last slice it counts as air
    np.testing.assert_allclose(values.array[-1], (70.0 + 25.0) - (-1000.0), atol=1e-4)
    assert diff.GetAttribute(mrml.ATTRIBUTE_KIND) == mrml.KIND_DIFFERENCE
    assert mrml.source_ct_of(diff) is sct
    display = diff.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == (200.0, 0.0)
    color = scene.GetNodeByID(display.GetColorNodeID())
    assert color.IsA("vtkMRMLColorTableNode") and color.GetNumberOfColors() == 256
    rgba = [0.0] * 4
    color.GetColor(0, rgba)
    assert rgba[:3] == pytest.approx([0.0, 0.0, 1.0])  # most negative: blue
    color.GetColor(255, rgba)
    assert rgba[:3] == pytest.approx([1.0, 0.0, 0.0])  # most positive: red
    color.GetColor(128, rgba)
    assert min(rgba[:3]) > 0.99  # zero: white
    legends = [diff.GetNthDisplayNode(i) for i in range(diff.GetNumberOfDisplayNodes())
               if diff.GetNthDisplayNode(i).IsA("vtkMRMLColorLegendDisplayNode")]
    assert len(legends) == 1 and legends[0].GetPrimaryDisplayNode() is display
    assert "HU" in legends[0].GetTitleText()
    # recomputing reuses the colour table and the legend
    mrml.update_difference_node(diff, sct, gt)
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode") == 1
    with pytest.raises(ValueError):
        mrml.update_difference_node(diff, sct, gt, range_hu=0.0)


def test_link_compare_views(compare_scene):
    scene, sct, gt, diff = compare_scene
    composites = mrml.link_compare_views(scene, sct, gt, diff, opacity=0.3)
    assert set(composites) == {v[0] for v in mrml.COMPARE_VIEWS.values()}
    slice_nodes = {}
    for (row, orientation), (name, _label, _color) in mrml.COMPARE_VIEWS.items():
        composite = composites[name]
        assert composite.GetLayoutName() == name
        assert composite is mrml.slice_composite_node(scene, name, create=False)  # one per view
        assert composite.GetBackgroundVolumeID() == (sct if row == "sct" else gt).GetID()
        assert composite.GetForegroundVolumeID() == diff.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.3)
        assert composite.GetLinkedControl() == 1
        slice_nodes[(row, orientation)] = next(
            scene.GetNthNodeByClass(i, "vtkMRMLSliceNode") for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode"))
            if scene.GetNthNodeByClass(i, "vtkMRMLSliceNode").GetLayoutName() == name)
    # linked positions: the sCT and ground-truth views of one orientation cut the same plane,
    # through the sCT's centre
    centre_ras = mrml._sct_center_ras(sct)
    for orientation in ("Axial", "Sagittal", "Coronal"):
        top, bottom = slice_nodes[("sct", orientation)], slice_nodes[("gt", orientation)]
        assert top.GetViewGroup() == bottom.GetViewGroup() == mrml.COMPARE_VIEW_GROUP
        assert top.GetSliceOffset() == pytest.approx(bottom.GetSliceOffset())
        slice_to_ras = top.GetSliceToRAS()
        origin = np.array([slice_to_ras.GetElement(r, 3) for r in range(3)])
        normal = np.array([slice_to_ras.GetElement(r, 2) for r in range(3)])
        assert float(normal @ (origin - centre_ras)) == pytest.approx(0.0, abs=1e-6)
    # jumping moves both rows together
    mrml.jump_compare_views(scene, (1.0, 2.0, 3.0))
    for orientation in ("Axial", "Sagittal", "Coronal"):
        assert slice_nodes[("sct", orientation)].GetSliceOffset() == pytest.approx(
            slice_nodes[("gt", orientation)].GetSliceOffset())
    assert slice_nodes[("sct", "Axial")].GetSliceOffset() == pytest.approx(3.0)
    mrml.set_difference_opacity(scene, 0.8)
    assert all(c.GetForegroundOpacity() == pytest.approx(0.8) for c in composites.values())
    with pytest.raises(ValueError):
        mrml.set_difference_opacity(scene, 1.5)
    # without a difference map the overlay is off
    again = mrml.link_compare_views(scene, sct, gt, None)
    assert all(c.GetForegroundVolumeID() is None and c.GetForegroundOpacity() == 0.0 for c in again.values())


def test_link_without_views_links_nothing(scene):
    node = mrml.add_volume_node(scene, _oblique(), "sCT")
    assert mrml.link_compare_views(scene, node, node) == {}


# ---------------------------------------------------------------------------------------
# metrics table
# ---------------------------------------------------------------------------------------

def test_metrics_table_contents(scene):
    rows = [{"metric": m, "window": w, "region": r, "value": v}
            for v, (m, w, r) in enumerate([("ssim", "brain", "head"), ("psnr", "full", "whole"),
                                           ("cosine", "full", "head"), ("mae_hu", "brain", "whole")])]
    rows[1]["value"] = float("inf")  # PSNR of identical volumes
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "metrics")
    mrml.update_metrics_table(table, rows)
    vtk_table = table.GetTable()
    assert [vtk_table.GetColumnName(c) for c in range(vtk_table.GetNumberOfColumns())] == list(mrml.METRICS_COLUMNS)
    assert vtk_table.GetNumberOfRows() == 4
    assert vtk_table.GetColumnByName("value").IsA("vtkDoubleArray")
    assert vtk_table.GetColumnByName("metric").IsA("vtkStringArray")
    assert table.GetCellText(0, 0) == "ssim" and table.GetCellText(3, 2) == "whole"
    assert table.GetColumnTitle("value") == "Value"
    assert mrml.metrics_from_table(table) == rows
    mrml.update_metrics_table(table, rows[:1])  # replaced, not appended
    assert mrml.metrics_from_table(table) == rows[:1]
    with pytest.raises(ValueError, match="lacks"):
        mrml.update_metrics_table(table, [{"metric": "ssim", "value": 1.0}])


def _slice_node(scene, name):
    return next(scene.GetNthNodeByClass(i, "vtkMRMLSliceNode") for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode"))
                if scene.GetNthNodeByClass(i, "vtkMRMLSliceNode").GetLayoutName() == name)


def _scroll(slice_node, millimetres):
    """What a user scrolling through a slice view does to its slice node."""
    slice_node.SetInteractionFlags(slice_node.SliceToRASFlag)
    slice_node.InteractingOn()
    slice_node.SetSliceOffset(slice_node.GetSliceOffset() + millimetres)
    slice_node.InteractingOff()


@pytest.mark.parametrize("linked", [True, False], ids=["linked", "unlinked"])
def test_slice_link_logic_moves_the_linked_views_together(scene, linked):
    """Slicer's own slice link logic, on the composite nodes link_compare_views set: scrolling
    the sCT's axial view moves the ground truth's axial view (same view group and orientation),
    and nothing else; without linking nothing follows."""
    app = slicer.vtkMRMLApplicationLogic()
    app.SetMRMLScene(scene)
    _logic, layout_node = _layout(scene)
    mrml.register_compare_layout(layout_node)
    node = mrml.add_volume_node(scene, Volume(np.zeros((8, 8, 8), np.float32), (2.0, 2.0, 2.0)), "sCT")
    mrml.link_compare_views(scene, node, node, linked=linked)
    link = slicer.vtkMRMLSliceLinkLogic()
    link.SetMRMLApplicationLogic(app)
    link.SetMRMLScene(scene)
    names = {key: value[0] for key, value in mrml.COMPARE_VIEWS.items()}
    before = {key: _slice_node(scene, name).GetSliceOffset() for key, name in names.items()}
    red_before = _slice_node(scene, "Red").GetSliceOffset()
    _scroll(_slice_node(scene, names[("sct", "Axial")]), 6.0)
    after = {key: _slice_node(scene, name).GetSliceOffset() for key, name in names.items()}
    assert after[("sct", "Axial")] == pytest.approx(before[("sct", "Axial")] + 6.0)
    expected_gt = before[("gt", "Axial")] + (6.0 if linked else 0.0)
    assert after[("gt", "Axial")] == pytest.approx(expected_gt)
    for key in names:
        if key[1] != "Axial":
            assert after[key] == pytest.approx(before[key]), key
    assert _slice_node(scene, "Red").GetSliceOffset() == pytest.approx(red_before)  # another view group

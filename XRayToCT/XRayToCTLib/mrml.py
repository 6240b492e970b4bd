"""Everything XRayToCT does with MRML nodes, with no GUI.

This module imports Slicer's MRML classes (``slicer.vtkMRML*``, from Slicer itself or from the
``slicer-core`` wheel) and VTK, never ``qt``, ``ctk`` or ``slicer.util``: it runs inside Slicer,
in Slicer's Python console, in ``Slicer --no-main-window`` batch runs, and in pytest on the
``slicer-core`` wheel. The Slicer module (``XRayToCT.py``) calls it; the library below it
(``geometry``, ``drr``, ``inference``, ``metrics``) never imports it.

Conventions:

* A scalar volume node holds voxels ``[k, j, i]`` and an IJK-to-RAS matrix; the library's
  :class:`~XRayToCTLib.geometry.Volume` holds the same voxels with LPS geometry. The only
  conversion is :meth:`Volume.ijk_to_ras` / :meth:`Volume.from_ijk_to_ras` (``geometry.py``).
* A radiograph is a single-slice volume node: voxel ``(i, j, 0)`` is detector pixel
  ``(row j, col i)``; when its projection geometry is known the slice sits where the detector
  is (so 3D views show the set-up) and the geometry is stored as JSON in the node attribute
  :data:`ATTRIBUTE_GEOMETRY`.
* Every synthetic CT node is labelled synthetic (its name, :data:`ATTRIBUTE_SYNTHETIC` and its
  description) and carries the projection-consistency scores as JSON in
  :data:`ATTRIBUTE_CONSISTENCY`.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer

from .compare import KIND_DIFFERENCE, difference_volume, on_grid_of
from .constants import SYNTHETIC_LABEL, SYNTHETIC_NOTE
from .geometry import ProjectionGeometry, Radiograph, Volume
from .io import json_text

__all__ = [
    "ATTRIBUTE_VIEW", "ATTRIBUTE_GEOMETRY", "ATTRIBUTE_KIND", "ATTRIBUTE_SOURCE", "ATTRIBUTE_METADATA",
    "ATTRIBUTE_SYNTHETIC", "ATTRIBUTE_MODEL", "ATTRIBUTE_CONSISTENCY", "ATTRIBUTE_INPUTS",
    "ATTRIBUTE_INFO", "KIND_DRR", "KIND_SCT", "KIND_DIFFERENCE", "SYNTHETIC_DESCRIPTION",
    "COMPARE_LAYOUT_ID", "COMPARE_VIEW_GROUP", "COMPARE_VIEWS", "METRICS_COLUMNS",
    "volume_from_node", "update_node_from_volume", "add_volume_node",
    "radiograph_from_node", "update_node_from_radiograph", "is_drr_of", "synthesize_drrs",
    "sct_node_name", "update_node_from_sct", "consistency_of", "source_ct_of",
    "compare_layout_description", "register_compare_layout", "slice_composite_node",
    "link_compare_views", "set_difference_opacity", "jump_compare_views",
    "difference_volume", "difference_color_node", "update_difference_node",
    "update_metrics_table", "metrics_from_table", "on_grid_of",
    "ATTRIBUTE_UNCERTAINTY", "KIND_UNCERTAINTY", "uncertainty_color_node", "update_uncertainty_node",
    "uncertainty_of",
]

#: Node attributes (strings) that XRayToCT reads and writes.
ATTRIBUTE_VIEW = "XRayToCT.View"
ATTRIBUTE_GEOMETRY = "XRayToCT.Geometry"
ATTRIBUTE_KIND = "XRayToCT.Kind"
ATTRIBUTE_SOURCE = "XRayToCT.SourceVolumeID"
ATTRIBUTE_METADATA = "XRayToCT.Metadata"
ATTRIBUTE_SYNTHETIC = "XRayToCT.Synthetic"
ATTRIBUTE_MODEL = "XRayToCT.Model"
ATTRIBUTE_CONSISTENCY = "XRayToCT.Consistency"
ATTRIBUTE_INPUTS = "XRayToCT.InputVolumeIDs"
ATTRIBUTE_INFO = "XRayToCT.Info"
ATTRIBUTE_UNCERTAINTY = "XRayToCT.UncertaintyVolumeID"

KIND_DRR = "DRR"
KIND_SCT = "sCT"
KIND_UNCERTAINTY = "sCT uncertainty"

SYNTHETIC_DESCRIPTION = f"{SYNTHETIC_LABEL}: {SYNTHETIC_NOTE}."
"""A synthetic CT node's description: the one sCT label and its explanation."""

#: Layout id of the compare layout (registered with the layout node; a free number above
#: Slicer's built-in layouts, which stop below 1000).
COMPARE_LAYOUT_ID = 7140
#: View group of the six compare views (linked slice positions stay inside a view group).
COMPARE_VIEW_GROUP = 7
#: Compare views: ``(row, orientation) -> (layout name, label, colour)``; row ``sct`` shows the
#: synthetic CT, row ``gt`` the ground truth.
COMPARE_VIEWS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("sct", "Axial"): ("XRayToCTsCTAxial", "S1", "#F34A33"),
    ("sct", "Sagittal"): ("XRayToCTsCTSagittal", "S2", "#EDD54C"),
    ("sct", "Coronal"): ("XRayToCTsCTCoronal", "S3", "#6EB04B"),
    ("gt", "Axial"): ("XRayToCTGTAxial", "G1", "#F34A33"),
    ("gt", "Sagittal"): ("XRayToCTGTSagittal", "G2", "#EDD54C"),
    ("gt", "Coronal"): ("XRayToCTGTCoronal", "G3", "#6EB04B"),
}

#: Columns of the metrics table node, in order (one row per metric, window and region).
METRICS_COLUMNS = ("metric", "window", "region", "value")


# ---------------------------------------------------------------------------------------
# arrays and matrices (no slicer.util: it belongs to the GUI application)
# ---------------------------------------------------------------------------------------

def _matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _array_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _node_array(node) -> np.ndarray:
    """A copy of a scalar volume node's voxels as ``[k, j, i]``."""
    image = node.GetImageData() if node is not None else None
    scalars = image.GetPointData().GetScalars() if image is not None else None
    if scalars is None:
        name = node.GetName() if node is not None else "the volume"
        raise ValueError(f"{name} has no image data")
    if scalars.GetNumberOfComponents() != 1:
        raise ValueError(f"{node.GetName()} has {scalars.GetNumberOfComponents()} components per voxel; "
                         "a scalar (grey-level) volume is needed")
    i, j, k = image.GetDimensions()
    return numpy_support.vtk_to_numpy(scalars).reshape(k, j, i).copy()


def _set_node_array(node, array: np.ndarray) -> None:
    """Replace a volume node's voxels by ``array`` ``[k, j, i]`` (copied)."""
    array = np.ascontiguousarray(array)
    if array.ndim != 3:
        raise ValueError(f"a volume needs a 3D array, got shape {array.shape}")
    k, j, i = array.shape
    image = vtk.vtkImageData()
    image.SetDimensions(i, j, k)
    scalars = numpy_support.numpy_to_vtk(array.reshape(-1), deep=True)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    node.SetAndObserveImageData(image)


def _world_ijk_to_ras(node) -> np.ndarray:
    """The node's IJK-to-RAS matrix with its (linear) parent transforms applied."""
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    transform = node.GetParentTransformNode()
    if transform is not None:
        if not transform.IsTransformToWorldLinear():
            raise ValueError(f"{node.GetName()} is under a non-linear transform: harden or remove it first")
        to_world = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(to_world)
        vtk.vtkMatrix4x4.Multiply4x4(to_world, ijk_to_ras, ijk_to_ras)
    return _matrix_to_array(ijk_to_ras)


def _scene_of(node):
    scene = node.GetScene() if node is not None else None
    if scene is None:
        raise ValueError("the node is not in a scene")
    return scene


def _ensure_display(node, window_level: tuple[float, float] | None = None, color_node_id: str | None = None):
    """Create the default display node (in a scene) and set its window/level (``None``: automatic)."""
    if node.GetScene() is None:
        return None
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is None:
        return None
    if color_node_id:
        display.SetAndObserveColorNodeID(color_node_id)
    if window_level is None:
        display.AutoWindowLevelOn()
    else:
        display.AutoWindowLevelOff()
        display.SetWindowLevel(float(window_level[0]), float(window_level[1]))
    return display


# ---------------------------------------------------------------------------------------
# volume node <-> Volume
# ---------------------------------------------------------------------------------------

def volume_from_node(node, dtype: Any = np.float32) -> Volume:
    """The library :class:`Volume` (LPS) of a scalar volume node, in world coordinates.

    Voxels are copied (as ``dtype``); a linear parent transform is applied to the geometry
    (a non-linear one is refused: harden it first). ``metadata`` names the node."""
    if node is None:
        raise ValueError("no volume selected")
    array = _node_array(node).astype(dtype, copy=False)
    return Volume.from_ijk_to_ras(array, _world_ijk_to_ras(node),
                                  {"source": node.GetName(), "mrml_node_id": node.GetID()})


def update_node_from_volume(node, volume: Volume, *, window_level: tuple[float, float] | None = None):
    """Put a :class:`Volume` (voxels and exact geometry) into a scalar volume node.

    The node's parent transform is removed (the geometry is already in world coordinates);
    a display node is created when the node is in a scene, with ``window_level``
    ``(window, level)`` in the volume's units (``None``: automatic). Returns the node."""
    if node.GetParentTransformNode() is not None:
        node.SetAndObserveTransformNodeID(None)
    _set_node_array(node, np.asarray(volume.array))
    node.SetIJKToRASMatrix(_array_to_matrix(volume.ijk_to_ras()))
    _ensure_display(node, window_level)
    return node


def add_volume_node(scene, volume: Volume, name: str, *, window_level: tuple[float, float] | None = None):
    """A new scalar volume node in ``scene`` (unique name from ``name``) holding ``volume``."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    return update_node_from_volume(node, volume, window_level=window_level)


# ---------------------------------------------------------------------------------------
# radiograph node <-> Radiograph
# ---------------------------------------------------------------------------------------

def radiograph_from_node(node, view: str | None = None) -> Radiograph:
    """The :class:`Radiograph` of a single-slice volume node.

    Pixel ``[row, col]`` is voxel ``(i=col, j=row, k=0)``; the pixel spacing is the node's
    ``(j, i)`` spacing. The projection geometry comes from the :data:`ATTRIBUTE_GEOMETRY`
    JSON when the node has one (DRRs and radiographs XRayToCT wrote), else it is ``None``.
    ``view`` overrides the view the node's attribute names.
    """
    if node is None:
        raise ValueError("no radiograph selected")
    array = _node_array(node)
    if array.shape[0] != 1:
        # a 2D image saved as a volume with a single row/column is not a radiograph either
        raise ValueError(f"{node.GetName()} is not a radiograph: it has {array.shape[0]} slices "
                         "(a radiograph is one 2D image)")
    spacing = node.GetSpacing()
    geometry = None
    text = node.GetAttribute(ATTRIBUTE_GEOMETRY)
    if text:
        try:
            geometry = ProjectionGeometry.from_dict(json.loads(text))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{node.GetName()}: its {ATTRIBUTE_GEOMETRY} attribute is not a valid "
                             f"projection geometry ({e})") from e
    metadata: dict[str, Any] = {}
    meta_text = node.GetAttribute(ATTRIBUTE_METADATA)
    if meta_text:
        try:
            metadata = dict(json.loads(meta_text))
        except (ValueError, TypeError):
            metadata = {}
    chosen = view or node.GetAttribute(ATTRIBUTE_VIEW) or (geometry.view if geometry else None)
    if chosen:
        metadata["view"] = chosen
    metadata.setdefault("source", node.GetName())
    metadata["mrml_node_id"] = node.GetID()
    return Radiograph(array[0].astype(np.float32), (float(spacing[1]), float(spacing[0])), geometry,
                      metadata)


def update_node_from_radiograph(node, radiograph: Radiograph, view: str, source_node=None):
    """Put a :class:`Radiograph` into a single-slice scalar volume node.

    Voxel spacing is the detector's ``(col, row, 1)`` mm. With a projection geometry the slice
    is placed where the detector is (the slice views then show it upright, seen from the
    source) and the geometry JSON goes into :data:`ATTRIBUTE_GEOMETRY`; the view goes into
    :data:`ATTRIBUTE_VIEW`, the kind (``DRR`` or ``radiograph``) into :data:`ATTRIBUTE_KIND`,
    the CT it was rendered from into :data:`ATTRIBUTE_SOURCE`. Returns the node."""
    array = np.asarray(radiograph.array, dtype=np.float32)
    row_spacing, col_spacing = radiograph.pixel_spacing or (1.0, 1.0)
    geometry = radiograph.geometry
    if geometry is not None:
        placed = Volume(array[None], (col_spacing, row_spacing, 1.0), origin=geometry.detector_origin(),
                        direction=geometry.detector_direction())
    else:
        placed = Volume(array[None], (col_spacing, row_spacing, 1.0))
    update_node_from_volume(node, placed)
    node.SetAttribute(ATTRIBUTE_VIEW, view)
    node.SetAttribute(ATTRIBUTE_KIND, str(radiograph.metadata.get("kind", "radiograph")))
    node.SetAttribute(ATTRIBUTE_GEOMETRY, geometry.to_json() if geometry is not None else "")
    node.SetAttribute(ATTRIBUTE_METADATA, json_text(radiograph.metadata))
    node.SetAttribute(ATTRIBUTE_SOURCE, source_node.GetID() if source_node is not None else "")
    return node


def is_drr_of(node, ct_node) -> bool:
    """Whether ``node`` is a DRR that XRayToCT rendered from ``ct_node``."""
    return bool(node is not None and ct_node is not None
                and node.GetAttribute(ATTRIBUTE_KIND) == KIND_DRR
                and node.GetAttribute(ATTRIBUTE_SOURCE) == ct_node.GetID())


_VIEW_LABELS = {"ap": "AP", "lateral": "lateral", "pa": "PA"}


def _view_label(view: str) -> str:
    return _VIEW_LABELS.get(view, view)


def update_drr_nodes(ct_node, radiographs: Mapping[str, Radiograph],
                     output_nodes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write DRRs of ``ct_node`` into nodes: ``output_nodes[view]`` when given, else a new
    node named ``"<CT> DRR <view>"``. Returns ``{view: node}``."""
    scene = _scene_of(ct_node)
    nodes = {}
    for view, radiograph in radiographs.items():
        node = (output_nodes or {}).get(view)
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(
                f"{ct_node.GetName()} DRR {_view_label(view)}"))
        radiograph.metadata.setdefault("kind", KIND_DRR)
        nodes[view] = update_node_from_radiograph(node, radiograph, view, source_node=ct_node)
    return nodes


def synthesize_drrs(ct_node, *, geometries: Mapping[str, ProjectionGeometry] | None = None,
                    pixels: int = 128, device: str = "auto",
                    output_nodes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Render DRRs of a CT node (HU) and put them into nodes.

    :param geometries: ``{view: ProjectionGeometry}`` (for instance a model's); each is moved
        to the CT's centre. ``None``: the project's default AP + lateral geometry with
        ``pixels`` detector pixels per side.
    :param device: ``auto``, ``cuda`` or ``cpu`` (PyTorch).
    :param output_nodes: ``{view: node}`` to render into (others are created).
    :return: ``{view: node}``.
    """
    # late: drr loads torch, which may not be installed when the Slicer module imports mrml
    from . import drr

    volume = volume_from_node(ct_node)
    if geometries is None:
        views = drr.biplanar_geometry(volume, pixels=int(pixels))
    else:
        views = {v: g.centered_on(volume.center) for v, g in geometries.items()}
    radiographs = drr.DRR(views).render(volume, device=device)
    return update_drr_nodes(ct_node, radiographs, output_nodes)


# ---------------------------------------------------------------------------------------
# synthetic CT nodes
# ---------------------------------------------------------------------------------------

def sct_node_name(source_name: str) -> str:
    """``"<source> sCT (synthetic)"``: the name says what the volume is."""
    return f"{source_name} sCT (synthetic)"


def update_node_from_sct(node, sct: Volume, *, model: str, consistency: Mapping[str, Any] | None = None,
                         source_node=None, input_nodes: Iterable[Any] = (), info: Mapping[str, Any] | None = None):
    """Put a synthetic CT (HU) into ``node`` and label it synthetic.

    Attributes: :data:`ATTRIBUTE_KIND` ``sCT``, :data:`ATTRIBUTE_SYNTHETIC` ``true``,
    :data:`ATTRIBUTE_MODEL`, :data:`ATTRIBUTE_CONSISTENCY` (JSON of the per-view scores),
    :data:`ATTRIBUTE_SOURCE` (the CT it was made from, if any), :data:`ATTRIBUTE_INPUTS`
    (the radiograph node IDs); the node's description says it is synthetic. Shown in the
    ``full`` window ([-1000, 1000] HU). Returns the node."""
    update_node_from_volume(node, sct, window_level=(2000.0, 0.0))
    node.SetAttribute(ATTRIBUTE_KIND, KIND_SCT)
    node.SetAttribute(ATTRIBUTE_SYNTHETIC, "true")
    node.SetAttribute(ATTRIBUTE_MODEL, str(model))
    node.SetAttribute(ATTRIBUTE_CONSISTENCY, json_text(dict(consistency or {}), sort_keys=True))
    node.SetAttribute(ATTRIBUTE_SOURCE, source_node.GetID() if source_node is not None else "")
    node.SetAttribute(ATTRIBUTE_INPUTS, " ".join(n.GetID() for n in input_nodes if n is not None))
    node.SetAttribute(ATTRIBUTE_INFO, json_text(dict(info or {}), sort_keys=True))
    node.SetDescription(SYNTHETIC_DESCRIPTION)
    return node


def _color_table(scene, name: str, rgb_of: Callable[[float], tuple[float, float, float]],
                 label_of: Callable[[float], str], n: int = 256):
    """A 256-entry user colour table node ``name`` (reused when it exists): entry ``i`` gets
    ``rgb_of(t)`` and ``label_of(t)`` with ``t = i / (n - 1)`` in [0, 1]."""
    existing = scene.GetFirstNodeByName(name)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    node.SetTypeToUser()
    node.SetNumberOfColors(n)
    for index in range(n):
        t = index / (n - 1)
        node.SetColor(index, label_of(t), *rgb_of(t), 1.0)
    node.SetAttribute("Category", "XRayToCT")
    return node


def _show_colored(node, volume: Volume, window_level: tuple[float, float], color_node, legend: str,
                  *, kind: str, source_node) -> None:
    """``volume`` into ``node`` shown through ``color_node`` (no interpolation) with a colour
    legend titled ``legend``; labelled ``kind``, synthetic, derived from ``source_node``."""
    update_node_from_volume(node, volume, window_level=window_level)
    display = node.GetDisplayNode()
    if display is not None:
        display.SetAndObserveColorNodeID(color_node.GetID())
        display.SetInterpolate(False)
        _ensure_color_legend(display, legend)
    node.SetAttribute(ATTRIBUTE_KIND, kind)
    node.SetAttribute(ATTRIBUTE_SYNTHETIC, "true")
    node.SetAttribute(ATTRIBUTE_SOURCE, source_node.GetID())


def uncertainty_color_node(scene, name: str = "XRayToCT uncertainty (HU)"):
    """A sequential colour table for a spread map (black, no spread -> red -> yellow -> white,
    the largest), 256 entries; the same node is reused when it exists."""
    return _color_table(scene, name, lambda t: (min(1.0, 3.0 * t), min(1.0, max(0.0, 3.0 * t - 1.0)),
                                                min(1.0, max(0.0, 3.0 * t - 2.0))),
                        lambda t: f"{t * 100:.0f}%")


def update_uncertainty_node(node, uncertainty: Volume, sct_node, *, range_hu: float = 200.0):
    """Put an sCT's uncertainty (the voxel SD of a diffusion model's samples, HU, on the sCT's
    grid) into ``node``: shown with :func:`uncertainty_color_node` over ``[0, range_hu]`` and a
    colour legend, labelled synthetic, linked from the sCT node (:data:`ATTRIBUTE_UNCERTAINTY`).
    Returns the node."""
    if not (math.isfinite(range_hu) and range_hu > 0):
        raise ValueError(f"range_hu must be positive, got {range_hu}")
    _show_colored(node, uncertainty, (range_hu, range_hu / 2.0), uncertainty_color_node(_scene_of(node)),
                  "sCT uncertainty: SD of the samples (HU)", kind=KIND_UNCERTAINTY, source_node=sct_node)
    node.SetDescription(f"Uncertainty of a {SYNTHETIC_LABEL}: the voxel standard deviation (HU) of the "
                        "model's samples (XRayToCT); not a measurement of the patient.")
    sct_node.SetAttribute(ATTRIBUTE_UNCERTAINTY, node.GetID())
    return node


def uncertainty_of(sct_node):
    """The uncertainty node of an sCT node, when it has one in the scene (else None)."""
    node_id = sct_node.GetAttribute(ATTRIBUTE_UNCERTAINTY) if sct_node is not None else None
    scene = sct_node.GetScene() if sct_node is not None else None
    return scene.GetNodeByID(node_id) if node_id and scene is not None else None


def consistency_of(node) -> dict[str, Any]:
    """The projection-consistency scores stored on an sCT node (``{}`` if none)."""
    text = node.GetAttribute(ATTRIBUTE_CONSISTENCY) if node is not None else None
    return json.loads(text) if text else {}


def source_ct_of(node):
    """The CT node an sCT (or a DRR) was made from, when it is still in the scene."""
    if node is None or node.GetScene() is None:
        return None
    node_id = node.GetAttribute(ATTRIBUTE_SOURCE)
    return node.GetScene().GetNodeByID(node_id) if node_id else None


# ---------------------------------------------------------------------------------------
# compare layout and view links
# ---------------------------------------------------------------------------------------

def compare_layout_description() -> str:
    """Layout XML of the compare views: two rows (sCT on top, ground truth below), each with
    axial, sagittal and coronal slice views, in view group :data:`COMPARE_VIEW_GROUP`."""
    rows = []
    for row in ("sct", "gt"):
        items = []
        for orientation in ("Axial", "Sagittal", "Coronal"):
            name, label, color = COMPARE_VIEWS[(row, orientation)]
            items.append(
                f'   <item>\n    <view class="vtkMRMLSliceNode" singletontag="{name}">\n'
                f'     <property name="orientation" action="default">{orientation}</property>\n'
                f'     <property name="viewlabel" action="default">{label}</property>\n'
                f'     <property name="viewcolor" action="default">{color}</property>\n'
                f'     <property name="viewgroup" action="default">{COMPARE_VIEW_GROUP}</property>\n'
                f'    </view>\n   </item>')
        rows.append(' <item>\n  <layout type="horizontal">\n' + "\n".join(items) + "\n  </layout>\n </item>")
    return '<layout type="vertical">\n' + "\n".join(rows) + "\n</layout>\n"


def register_compare_layout(layout_node, *, show: bool = True) -> int:
    """Add (or update) the compare layout in the layout node; with ``show``, switch to it
    (Slicer's layout manager then creates the six slice views). Returns the layout id."""
    description = compare_layout_description()
    if layout_node.IsLayoutDescription(COMPARE_LAYOUT_ID):
        layout_node.SetLayoutDescription(COMPARE_LAYOUT_ID, description)
    else:
        layout_node.AddLayoutDescription(COMPARE_LAYOUT_ID, description)
    if show:
        layout_node.SetViewArrangement(COMPARE_LAYOUT_ID)
    return COMPARE_LAYOUT_ID


def _nodes_by_class(scene, class_name: str) -> list:
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


def slice_composite_node(scene, layout_name: str, *, create: bool = True):
    """The slice composite node of the view ``layout_name``.

    Slicer's layout manager creates it with the view; outside the GUI (or before the view
    exists) a :class:`vtkMRMLSliceLogic` creates the slice node's composite node the same way
    Slicer does, when ``create`` is true. ``None`` if absent and not created."""
    for composite in _nodes_by_class(scene, "vtkMRMLSliceCompositeNode"):
        if composite.GetLayoutName() == layout_name:
            return composite
    if not create:
        return None
    slice_node = next((n for n in _nodes_by_class(scene, "vtkMRMLSliceNode") if n.GetLayoutName() == layout_name),
                      None)
    if slice_node is None:
        return None
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLScene(scene)
    logic.SetSliceNode(slice_node)
    composite = logic.GetSliceCompositeNode()
    logic.SetMRMLScene(None)
    return composite


def _slice_node(scene, layout_name: str):
    return next((n for n in _nodes_by_class(scene, "vtkMRMLSliceNode") if n.GetLayoutName() == layout_name), None)


def link_compare_views(scene, sct_node, gt_node, difference_node=None, *, opacity: float = 0.5,
                       linked: bool = True) -> dict[str, Any]:
    """Show the sCT (top row) and the ground truth (bottom row) in the compare views, the
    difference map as the foreground of all six at ``opacity``, and link them.

    Linking: each composite node gets ``LinkedControl`` (and the six share the view group
    :data:`COMPARE_VIEW_GROUP`), so Slicer's slice link logic moves same-orientation views
    together; the slice nodes are also put through the same point now (the centre of the
    sCT). Views that do not exist (the layout was not shown) are skipped.
    Returns ``{layout name: composite node}`` of the views that were set."""
    composites = {}
    for (row, orientation), (name, _label, _color) in COMPARE_VIEWS.items():
        composite = slice_composite_node(scene, name)
        if composite is None:
            continue
        background = sct_node if row == "sct" else gt_node
        composite.SetBackgroundVolumeID(background.GetID() if background is not None else None)
        composite.SetForegroundVolumeID(difference_node.GetID() if difference_node is not None else None)
        composite.SetForegroundOpacity(float(opacity) if difference_node is not None else 0.0)
        composite.SetLabelVolumeID(None)
        composite.SetLinkedControl(1 if linked else 0)
        composite.SetHotLinkedControl(0)
        composite.SetDoPropagateVolumeSelection(False)
        slice_node = _slice_node(scene, name)
        if slice_node is not None:
            slice_node.SetViewGroup(COMPARE_VIEW_GROUP)
            slice_node.SetOrientation(orientation)
        composites[name] = composite
    if sct_node is not None and sct_node.GetImageData() is not None:
        jump_compare_views(scene, _sct_center_ras(sct_node))
    return composites


def _sct_center_ras(node) -> np.ndarray:
    i, j, k = node.GetImageData().GetDimensions()
    center = np.array([(i - 1) / 2.0, (j - 1) / 2.0, (k - 1) / 2.0, 1.0])
    return (_world_ijk_to_ras(node) @ center)[:3]


def jump_compare_views(scene, point_ras: Sequence[float]) -> None:
    """Move every compare view's slice through ``point_ras`` (RAS mm): the slice offsets
    of same-orientation views become equal."""
    r, a, s = (float(x) for x in point_ras)
    for name, _label, _color in COMPARE_VIEWS.values():
        slice_node = _slice_node(scene, name)
        if slice_node is not None:
            slice_node.JumpSliceByCentering(r, a, s)


def set_difference_opacity(scene, opacity: float) -> None:
    """Set the difference overlay's opacity (0-1) in all compare views."""
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    for name, _label, _color in COMPARE_VIEWS.values():
        composite = slice_composite_node(scene, name, create=False)
        if composite is not None:
            composite.SetForegroundOpacity(float(opacity))


# ---------------------------------------------------------------------------------------
# difference map
# ---------------------------------------------------------------------------------------

def difference_color_node(scene, name: str = "XRayToCT difference (HU)"):
    """A diverging colour table (blue = sCT below the ground truth, white = equal, red = above),
    256 entries; the same node is reused when it exists."""
    def rgb(t: float) -> tuple[float, float, float]:
        d = 2.0 * t - 1.0  # -1 .. 1
        return (1.0 + d, 1.0 + d, 1.0) if d < 0 else (1.0, 1.0 - d, 1.0 - d)  # blue -> white -> red

    return _color_table(scene, name, rgb, lambda t: f"{(2.0 * t - 1.0) * 100:+.0f}%")


def update_difference_node(node, sct_node, gt_node, *, range_hu: float = 500.0,
                           difference: Volume | None = None):
    """Fill ``node`` with ``sCT - ground truth`` (HU, on the sCT grid; ``difference`` when it
    was computed already) shown with the diverging colours of :func:`difference_color_node`
    over ``[-range_hu, +range_hu]``, and add a colour legend (a
    ``vtkMRMLColorLegendDisplayNode``) to it. Returns the node."""
    if not (math.isfinite(range_hu) and range_hu > 0):
        raise ValueError(f"range_hu must be positive, got {range_hu}")
    diff = difference if difference is not None else \
        difference_volume(volume_from_node(sct_node), volume_from_node(gt_node))
    _show_colored(node, diff, (2.0 * range_hu, 0.0), difference_color_node(_scene_of(sct_node)),
                  "sCT - ground truth (HU)", kind=KIND_DIFFERENCE, source_node=sct_node)
    node.SetDescription("Difference sCT - ground truth in HU (XRayToCT); derived from a synthetic CT.")
    return node


def _ensure_color_legend(display_node, title: str):
    """The colour legend of a display node (created, in the scene, when missing)."""
    scene = display_node.GetScene()
    displayable = display_node.GetDisplayableNode()
    for index in range(displayable.GetNumberOfDisplayNodes()):
        other = displayable.GetNthDisplayNode(index)
        if other is not None and other.IsA("vtkMRMLColorLegendDisplayNode"):
            other.SetTitleText(title)
            return other
    if not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
        # Slicer's Colors module registers it; a bare scene (slicer-core) does not
        scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    legend = scene.AddNewNodeByClass("vtkMRMLColorLegendDisplayNode")
    legend.SetAndObservePrimaryDisplayNode(display_node)
    legend.SetTitleText(title)
    legend.SetVisibility(True)
    displayable.AddAndObserveDisplayNodeID(legend.GetID())
    return legend


# ---------------------------------------------------------------------------------------
# metrics table
# ---------------------------------------------------------------------------------------

def update_metrics_table(table_node, rows: Sequence[Mapping[str, Any]]):
    """Write metric rows (``{metric, window, region, value}``, as ``metrics.evaluate_pair``
    returns them) into a ``vtkMRMLTableNode``: string columns ``metric``, ``window``,
    ``region`` and a double column ``value``. Returns the node."""
    table = vtk.vtkTable()
    columns = {}
    for name in METRICS_COLUMNS:
        column = vtk.vtkDoubleArray() if name == "value" else vtk.vtkStringArray()
        column.SetName(name)
        table.AddColumn(column)
        columns[name] = column
    for row in rows:
        missing = [c for c in METRICS_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"metric row {dict(row)} lacks {missing}")
        for name in METRICS_COLUMNS:
            if name == "value":
                columns[name].InsertNextValue(float(row[name]))
            else:
                columns[name].InsertNextValue(str(row[name]))
    table_node.SetAndObserveTable(table)
    table_node.SetUseColumnTitleAsColumnHeader(True)
    for name in METRICS_COLUMNS:
        table_node.SetColumnTitle(name, name.capitalize())
    table_node.SetColumnDescription("value", "SSIM and cosine: 0-1 (1 = identical); PSNR: dB; MAE: HU")
    table_node.SetLocked(True)
    return table_node


def metrics_from_table(table_node) -> list[dict[str, Any]]:
    """The rows of a metrics table node, as written by :func:`update_metrics_table`."""
    table = table_node.GetTable()
    out = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for name in METRICS_COLUMNS:
            column = table.GetColumnByName(name)
            if column is None:
                raise ValueError(f"{table_node.GetName()} has no column {name!r}")
            row[name] = float(column.GetValue(r)) if name == "value" else str(column.GetValue(r))
        out.append(row)
    return out

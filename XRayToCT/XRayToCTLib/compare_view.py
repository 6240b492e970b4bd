"""``compare.png``: the Slicer module's compare layout, rendered by Slicer's own slice logic.

The six views of the module's Compare (sCT on top, ground truth below; axial, sagittal and
coronal; :data:`XRayToCTLib.mrml.COMPARE_VIEWS`) are made the way the module makes them: a
MRML scene (the ``slicer-core`` package: Slicer's MRML without Qt), the compare layout
registered with a layout node (Slicer's layout logic creates the six slice nodes),
:func:`XRayToCTLib.mrml.link_compare_views` puts the volumes in the views and links them.
Each view is then rendered offscreen by a ``vtkMRMLSliceLogic``: its reslice and blend
pipeline (background volume, difference map as the foreground at the overlay's opacity,
composited as :data:`BLENDS` says) gives the pane's pixels, with no render window. Pillow puts the panes together with their
labels, orientation letters and the difference map's colour legend.

Display conventions are Slicer's own slice orientations: axial with anterior at the top and
the patient's right on the image's left, coronal with superior at the top and the right on
the left, sagittal with superior at the top and the face on the *left* (Slicer's sagittal
view; the project's other previews put the face on the right). The orientation letters on
each pane are read from its slice node's matrix, so they say what is shown. Every pane cuts
through one RAS point (the linked position); all panes share one scale (mm per pixel) and
are centred on the middle of the two volumes' extent.

``slicer`` and ``vtk`` are imported inside the functions: without them :func:`unavailable`
says what to install, and the rest of the library does not need them.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .compare import check_position
from .constants import SYNTHETIC_LABEL
from .geometry import Volume
from .hu import window_range
from .io import atomic_write
from .report import label_orientation

__all__ = ["OVERLAY_ROWS", "BLENDS", "ORIENTATIONS", "ROW_TITLES", "ComparePicture", "unavailable",
           "render_panes", "compose_picture", "write_compare_png"]

OVERLAY_ROWS: dict[str, tuple[str, ...]] = {"both": ("sct", "gt"), "sct": ("sct",), "none": ()}
"""Which rows show the difference overlay, by the ``overlay`` argument's value."""
BLENDS = ("add", "alpha")
"""How the difference map goes over the grey views, both Slicer compositing modes of the
slice composite node: ``add`` adds ``opacity`` x a blue-black-red map (blue = sCT below the
ground truth, black = equal, red = above), so equal voxels keep their grey; ``alpha`` is the
module's view, an alpha blend of its blue-white-red map (equal voxels are washed white)."""
ORIENTATIONS = ("Axial", "Sagittal", "Coronal")
ROW_TITLES = {"sct": "sCT (synthetic)", "gt": "ground truth"}

_NEEDS = ("the picture (compare.png) needs Slicer's MRML: install the slicer-core package "
          "(pip install slicer-core)")


def unavailable() -> str | None:
    """None when Slicer's MRML slice logic can be imported; else one line saying what the
    picture needs."""
    try:
        import slicer
        import vtk  # noqa: F401
    except ImportError:
        return _NEEDS
    if not all(hasattr(slicer, c) for c in ("vtkMRMLScene", "vtkMRMLSliceLogic", "vtkMRMLLayoutLogic")):
        return _NEEDS  # another package called "slicer", or a Slicer without MRML
    return None


@dataclasses.dataclass
class ComparePicture:
    """A rendered compare picture.

    Attributes:
        image: the whole picture, RGB ``uint8`` ``[row, col, 3]``.
        panes: ``(row, orientation) -> (x0, y0, x1, y1)``: each pane's pixels in ``image``
            (``row`` ``"sct"`` or ``"gt"``; ``orientation`` as in :data:`ORIENTATIONS`).
        position_ras: the linked position every pane cuts through (RAS mm).
        center_ras: the point at the middle of every pane (RAS mm; the position's own
            coordinate replaces the one along each pane's normal).
        mm_per_pixel: the scale of every pane.
        overlay_rows: the rows with the difference overlay.
        path: where it was written (None when not written).
    """

    image: np.ndarray
    panes: dict[tuple[str, str], tuple[int, int, int, int]]
    position_ras: np.ndarray
    center_ras: np.ndarray
    mm_per_pixel: float
    overlay_rows: tuple[str, ...]
    path: Path | None = None


def _added_color_node(scene):
    """Blue (-range) - black (0) - red (+range), 256 entries: what ``add`` compositing adds."""
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "XRayToCT difference, added (HU)")
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    for index in range(256):
        t = index / 255.0 * 2.0 - 1.0
        node.SetColor(index, f"{t * 100:+.0f}%", max(t, 0.0), 0.0, max(-t, 0.0), 1.0)
    return node


def _slice_node(scene, layout_name: str):
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSliceNode")
        if node.GetLayoutName() == layout_name:
            return node
    raise RuntimeError(f"the compare layout made no slice view {layout_name}")


_AXIS_LETTERS = (("R", "L"), ("A", "P"), ("S", "I"))


def _edge_letters(slice_node) -> tuple[str, str, str, str]:
    """The patient directions at the (top, bottom, left, right) edges of a slice view, from
    its slice-to-RAS matrix (column 0: the view's rightward direction, column 1: upward)."""
    m = slice_node.GetSliceToRAS()
    out = []
    for column in (1, 0):
        v = np.array([m.GetElement(r, column) for r in range(3)])
        axis = int(np.argmax(np.abs(v)))
        toward, away = _AXIS_LETTERS[axis] if v[axis] > 0 else _AXIS_LETTERS[axis][::-1]
        out.append((toward, away))
    (top, bottom), (right, left) = out
    return top, bottom, left, right


def _render_view(scene, slice_node) -> np.ndarray:
    """The slice logic's blended output of one view, RGB over black, row 0 at the top."""
    import slicer
    from vtk.util import numpy_support

    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLScene(scene)
    logic.SetSliceNode(slice_node)
    try:
        producer = logic.GetImageDataConnection().GetProducer()
        producer.Update()
        image = producer.GetOutputDataObject(0)
        w, h, _d = image.GetDimensions()
        rgba = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)
    finally:
        logic.SetMRMLScene(None)
    rgba = rgba[::-1].astype(np.float32)  # VTK's row 0 is the bottom of the view
    alpha = rgba[..., 3:4] / 255.0 if rgba.shape[-1] == 4 else 1.0
    return np.clip(rgba[..., :3] * alpha + 0.5, 0, 255).astype(np.uint8)


def render_panes(sct: Volume, ground_truth: Volume, difference: Volume | None, *,
                 position_ras: Sequence[float], range_hu: float = 500.0, opacity: float = 0.5,
                 overlay: str = "sct", window: str | Sequence[float] = "full",
                 pane_px: int = 256, blend: str = "add") -> dict[str, Any]:
    """The six compare views rendered by Slicer's slice logic.

    Returns ``{"panes": {(row, orientation): RGB uint8 [pane_px, pane_px, 3]}, "center_ras",
    "mm_per_pixel", "overlay_rows", "letters": {(row, orientation): (top, bottom, left, right)},
    "legend": RGB [256, 3] of the difference colours from -range_hu to +range_hu, "blend"}``.
    ``overlay`` picks the rows with the difference (:data:`OVERLAY_ROWS`), ``blend`` how it is
    composited (:data:`BLENDS`); ``window`` is the grey-level window of both volumes."""
    import slicer

    from . import mrml

    if overlay not in OVERLAY_ROWS:
        raise ValueError(f"overlay must be one of {sorted(OVERLAY_ROWS)}, got {overlay!r}")
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {list(BLENDS)}, got {blend!r}")
    if not (np.isfinite(range_hu) and range_hu > 0):
        raise ValueError(f"the difference range must be positive, got {range_hu}")
    if int(pane_px) < 16:
        raise ValueError(f"panes need at least 16 pixels, got {pane_px}")
    position = np.asarray(position_ras, dtype=float).reshape(3)
    low, high = check_position(position, (sct, ground_truth))
    rows = OVERLAY_ROWS[overlay] if difference is not None else ()
    lo, hi = window_range(window)

    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)  # as Slicer's app logic does
    layout_logic = slicer.vtkMRMLLayoutLogic()
    layout_logic.SetMRMLScene(scene)
    mrml.register_compare_layout(layout_logic.GetLayoutNode())  # the six views, as in Slicer
    grey = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "Grey")
    grey.SetTypeToGrey()
    nodes = {}
    for row, volume in (("sct", sct), ("gt", ground_truth)):
        name = mrml.sct_node_name("compare") if row == "sct" else "ground truth"
        nodes[row] = mrml.add_volume_node(scene, volume.with_array(np.asarray(volume.array, np.float32)),
                                          name, window_level=(hi - lo, (hi + lo) / 2.0))
        nodes[row].GetDisplayNode().SetAndObserveColorNodeID(grey.GetID())
    diff_node = None
    colors = _added_color_node(scene) if blend == "add" else mrml.difference_color_node(scene)
    if rows:
        diff_node = mrml.add_volume_node(scene, difference.with_array(np.asarray(difference.array, np.float32)),
                                         "sCT - ground truth (HU)", window_level=(2.0 * range_hu, 0.0))
        display = diff_node.GetDisplayNode()
        display.SetAndObserveColorNodeID(colors.GetID())
        display.SetInterpolate(False)
    composites = mrml.link_compare_views(scene, nodes["sct"], nodes["gt"], diff_node, opacity=opacity)
    for (row, _orientation), (name, _label, _color) in mrml.COMPARE_VIEWS.items():
        if name not in composites:
            continue
        composite = composites[name]
        composite.SetCompositing(composite.Add if blend == "add" else composite.Alpha)
        if row not in rows:
            composite.SetForegroundVolumeID(None)
            composite.SetForegroundOpacity(0.0)

    center = (low + high) / 2.0
    field = float(np.max(high - low))
    panes, letters = {}, {}
    for (row, orientation), (name, _label, _color) in mrml.COMPARE_VIEWS.items():
        slice_node = _slice_node(scene, name)
        slice_node.SetDimensions(int(pane_px), int(pane_px), 1)
        slice_node.SetFieldOfView(field, field, field / pane_px)
        slice_node.JumpSliceByCentering(*center)     # the panes' middle: the volumes' middle
        slice_node.JumpSliceByOffsetting(*position)  # the cut: through the linked position
        panes[(row, orientation)] = _render_view(scene, slice_node)
        letters[(row, orientation)] = _edge_letters(slice_node)
    legend = np.zeros((256, 3), np.uint8)
    for index in range(256):
        rgba = [0.0, 0.0, 0.0, 0.0]
        colors.GetColor(index, rgba)
        legend[index] = np.clip(np.round(np.asarray(rgba[:3]) * 255.0), 0, 255)
    return {"panes": panes, "center_ras": center, "mm_per_pixel": field / pane_px,
            "overlay_rows": tuple(rows), "letters": letters, "legend": legend, "blend": blend}


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    box = draw.textbbox((0, 0), text, font=font)
    return int(box[2] - box[0])


def compose_picture(rendered: dict[str, Any], *, position_ras: Sequence[float], range_hu: float,
                    opacity: float, window: str | Sequence[float], caption: str | None = None) -> ComparePicture:
    """Put the panes of :func:`render_panes` together: a title with the synthetic label, the
    row titles (left, rotated), each pane's label above it (view label and orientation),
    orientation letters on each pane, the colour legend on the right and the settings below."""
    from . import mrml

    panes = rendered["panes"]
    size = next(iter(panes.values())).shape[0]
    gap, margin, side, label_h = 8, 12, 26, 20
    title_h, foot_h, legend_w = 30, 40, 120
    width = margin + side + 3 * size + 2 * gap + margin + legend_w
    height = title_h + 2 * (label_h + size) + gap + foot_h
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    big, small = _font(16), _font(12)
    white, grey = (255, 255, 255), (190, 190, 190)
    draw.text((margin, 7), f"XRayToCT compare: sCT (synthetic) vs ground truth. {SYNTHETIC_LABEL}",
              font=big, fill=white)
    boxes: dict[tuple[str, str], tuple[int, int, int, int]] = {}
    for r, row in enumerate(("sct", "gt")):
        top = title_h + r * (label_h + size + gap)
        y0 = top + label_h
        # the row title, rotated, left of the panes
        text = ROW_TITLES[row]
        strip = Image.new("RGB", (size, side), (0, 0, 0))
        sdraw = ImageDraw.Draw(strip)
        sdraw.text(((size - _text_width(sdraw, text, big)) // 2, 4), text, font=big,
                   fill=(255, 210, 120) if row == "sct" else white)
        canvas.paste(strip.rotate(90, expand=True), (margin, y0))
        for c, orientation in enumerate(ORIENTATIONS):
            x0 = margin + side + c * (size + gap)
            _name, label, color = mrml.COMPARE_VIEWS[(row, orientation)]
            draw.rectangle((x0, top + 3, x0 + 14, top + label_h - 4), fill=color)
            draw.text((x0 + 20, top + 3), f"{label} {ROW_TITLES[row]}: {orientation.lower()}",
                      font=small, fill=white)
            pixels = panes[(row, orientation)]
            letters = rendered["letters"][(row, orientation)]
            lettered = np.stack([label_orientation(pixels[..., k], letters) for k in range(3)], axis=-1)
            canvas.paste(Image.fromarray(lettered), (x0, y0))
            boxes[(row, orientation)] = (x0, y0, x0 + size, y0 + size)
    # the legend: the difference colours from -range (bottom) to +range (top)
    lx = margin + side + 3 * size + 2 * gap + margin
    bar_top, bar_h = title_h + label_h + 22, 2 * size + label_h + gap - 44
    draw.text((lx, title_h + label_h), "sCT - ground truth", font=small, fill=white)
    colours = rendered["legend"][::-1]
    bar = np.repeat(colours[np.linspace(0, len(colours) - 1, bar_h).round().astype(int)][:, None], 18, axis=1)
    canvas.paste(Image.fromarray(np.ascontiguousarray(bar)), (lx, bar_top))
    draw.rectangle((lx - 1, bar_top - 1, lx + 18, bar_top + bar_h), outline=grey)
    for frac, value in ((0.0, range_hu), (0.25, range_hu / 2), (0.5, 0.0), (0.75, -range_hu / 2),
                        (1.0, -range_hu)):
        y = bar_top + int(round(frac * (bar_h - 1)))
        draw.line((lx + 18, y, lx + 23, y), fill=white)
        draw.text((lx + 26, y - 7), f"{value:+.0f} HU" if value else "0 HU", font=small, fill=white)
    overlay_rows = rendered["overlay_rows"]
    where = {("sct", "gt"): "both rows", ("sct",): "the sCT row", (): "no row"}[tuple(overlay_rows)]
    draw.text((lx, bar_top + bar_h + 4), f"overlay: {where}", font=small, fill=grey)
    how = {"add": "added", "alpha": "blended"}[rendered["blend"]]
    draw.text((lx, bar_top + bar_h + 18), f"{how} x {opacity:g}" if overlay_rows else "", font=small, fill=grey)
    position = np.asarray(position_ras, dtype=float).reshape(3)
    lo, hi = window_range(window)
    wname = window if isinstance(window, str) else "custom"
    foot_y = height - foot_h + 4
    draw.text((margin, foot_y), f"linked position (RAS mm): R {position[0]:.1f}, A {position[1]:.1f}, "
              f"S {position[2]:.1f}; {wname} window [{lo:.0f}, {hi:.0f}] HU; "
              f"{rendered['mm_per_pixel']:.2f} mm/pixel; rendered by Slicer's MRML slice logic",
              font=small, fill=grey)
    if caption:
        draw.text((margin, foot_y + 17), caption, font=small, fill=grey)
    return ComparePicture(np.asarray(canvas), boxes, position, np.asarray(rendered["center_ras"]),
                          float(rendered["mm_per_pixel"]), tuple(overlay_rows))


def write_compare_png(path: str | os.PathLike, sct: Volume, ground_truth: Volume,
                      difference: Volume | None, *, position_ras: Sequence[float],
                      range_hu: float = 500.0, opacity: float = 0.5, overlay: str = "sct",
                      window: str | Sequence[float] = "full", pane_px: int = 256,
                      blend: str = "add", caption: str | None = None) -> ComparePicture:
    """Render (:func:`render_panes`), compose (:func:`compose_picture`) and write the compare
    picture as a PNG, atomically. Returns the :class:`ComparePicture` with its path."""
    rendered = render_panes(sct, ground_truth, difference, position_ras=position_ras,
                            range_hu=range_hu, opacity=opacity, overlay=overlay, window=window,
                            pane_px=pane_px, blend=blend)
    picture = compose_picture(rendered, position_ras=position_ras, range_hu=range_hu,
                              opacity=opacity, window=window, caption=caption)
    path = Path(path)
    atomic_write(path, lambda fh: Image.fromarray(picture.image).save(fh, format="PNG", optimize=True),
                 binary=True)
    return dataclasses.replace(picture, path=path)

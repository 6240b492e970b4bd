"""The Slicer module's background work on MRML nodes, as ``xraytoct`` processes.

Each ``*_task`` function takes nodes, returns a :class:`~XRayToCTLib.process.CommandTask`
that writes the inputs into its folder (NRRD with geometry), runs the ``xraytoct`` command
in a separate process and, once it succeeded, puts the outputs back into nodes (its
``result()``, on the caller's thread). The ``put_*`` functions are those last steps, shared
with the module's blocking, in-process forms. MRML only, never Qt; the file readers are
imported inside the functions, because the Slicer module imports this file before its Python
packages may be installed.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Sequence

from . import mrml, process
from .errors import Cancelled
from .geometry import Radiograph, Volume

__all__ = ["check_in_scene", "drr_task", "simulate_task", "harmonize_task", "reconstruction_task",
           "put_reconstruction", "compare_task", "put_comparison"]

VIEWS = ("ap", "lateral")
_VIEW_LABELS = {"ap": "AP", "lateral": "lateral"}


def _io():
    from . import io  # late: pydicom and Pillow may not be installed yet (see the module doc)
    return io


def check_in_scene(*nodes) -> None:
    """Cancelled when a node a task was started with left its scene (the scene was closed, or
    the node deleted): its result has nowhere to go."""
    if any(node is None or node.GetScene() is None for node in nodes):
        raise Cancelled("the scene was closed (or an input node deleted) while the task ran")


def _radiographs(folder: Path, pattern: str) -> dict[str, Radiograph]:
    """``{view: Radiograph}`` of the files ``pattern.format(view=...)`` that exist in ``folder``."""
    xio = _io()
    return {view: xio.read_radiograph(folder / pattern.format(view=view), view=view)
            for view in VIEWS if (folder / pattern.format(view=view)).is_file()}


def drr_task(ct_node, output_nodes: Mapping[str, Any] | None = None, *, pixels: int = 128,
             device: str = "auto", model: str | None = None) -> process.CommandTask:
    """The CT's DRRs (``xraytoct drr``; at the model's geometry when ``model`` is given) into
    ``output_nodes[view]`` or new nodes; ``result()`` is ``{view: node}``."""
    ct = mrml.volume_from_node(ct_node)

    def prepare(folder):
        _io().write_volume(ct, folder / "ct.nrrd", compress=False)
        argv = ["drr", folder / "ct.nrrd", "--out-dir", folder / "drr", "--device", device]
        return argv + (["--model", model] if model else ["--pixels", int(pixels)])

    def finish(folder):
        check_in_scene(ct_node)
        return mrml.update_drr_nodes(ct_node, _radiographs(folder / "drr", "ct_{view}_drr.nrrd"), output_nodes)

    return process.CommandTask(prepare, finish, name="XRayToCT DRR synthesis")


def simulate_task(ct_node, *, model: str | None = None, device: str = "auto", seed: int = 0,
                  options: Sequence[Any] = ()) -> process.CommandTask:
    """Realistic radiographs of the CT (``xraytoct simulate``, more of its arguments in
    ``options``) into new nodes ``"<CT> simulated <view>"``; ``result()`` is ``{view: node}``."""
    ct = mrml.volume_from_node(ct_node)

    def prepare(folder):
        _io().write_volume(ct, folder / "ct.nrrd", compress=False)
        argv = ["simulate", folder / "ct.nrrd", "--out-dir", folder / "sim", "--device", device,
                "--seed", int(seed)]
        return argv + (["--model", model] if model else []) + list(options)

    def finish(folder):
        check_in_scene(ct_node)
        scene, nodes = ct_node.GetScene(), {}
        for view, radiograph in _radiographs(folder / "sim", "ct_{view}_simulated.nrrd").items():
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(
                f"{ct_node.GetName()} simulated {_VIEW_LABELS[view]}"))
            nodes[view] = mrml.update_node_from_radiograph(node, radiograph, view, source_node=ct_node)
        return nodes

    return process.CommandTask(prepare, finish, name="XRayToCT radiograph simulation")


def harmonize_task(node, harmonizer: str, *, view: str | None = None,
                   device: str = "auto") -> process.CommandTask:
    """The radiograph translated into the DRR domain (``xraytoct harmonize``) into a new node
    ``"<name> harmonised"`` with its geometry and view; ``result()`` is that node."""
    radiograph = mrml.radiograph_from_node(node, view)
    view = view or node.GetAttribute(mrml.ATTRIBUTE_VIEW) or "ap"

    def prepare(folder):
        _io().write_radiograph(radiograph, folder / "in.nrrd")
        return ["harmonize", folder / "in.nrrd", "--model", harmonizer, "--out", folder / "out.nrrd",
                "--device", device]

    def finish(folder):
        check_in_scene(node)
        scene = node.GetScene()
        out = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(f"{node.GetName()} harmonised"))
        return mrml.update_node_from_radiograph(out, _io().read_radiograph(folder / "out.nrrd", view=view), view)

    return process.CommandTask(prepare, finish, name="XRayToCT harmonisation")


def reconstruction_task(finish: Callable[[Any], Any], *, model: str, device: str = "auto",
                        ct: Volume | None = None, views: Mapping[str, Radiograph] | None = None,
                        register: bool | str = "auto", refine: bool | int = False, samples: int = 1,
                        seed: int = 0, harmonize: str | None = None) -> process.CommandTask:
    """``xraytoct reconstruct`` from ``ct`` or ``views``; ``finish(result)`` (usually
    :func:`put_reconstruction`) gets what it wrote as an object with ``sct``, ``drrs`` (the
    images the model saw), ``consistency``, ``info`` (the JSON) and ``uncertainty`` (or None).
    ``refine``: False, True or a number of steps."""
    if not isinstance(refine, int):  # bools are ints
        raise ValueError("in a background process refine is True, False or a number of steps")

    def prepare(folder):
        xio = _io()
        argv = ["reconstruct", "--model", model, "--out", folder / "sct.nrrd", "--device", device]
        if ct is not None:
            xio.write_volume(ct, folder / "ct.nrrd", compress=False)
            argv += ["--ct", folder / "ct.nrrd"] + (["--no-register"] if register is False else [])
        for view, radiograph in (views or {}).items():
            argv += [f"--{view}", xio.write_radiograph(radiograph, folder / f"{view}.nrrd")]
        if refine is True:
            argv.append("--refine")
        elif refine:
            argv += ["--refine", int(refine)]
        if int(samples) > 1:
            argv += ["--samples", int(samples), "--seed", int(seed)]
        return argv + (["--harmonize", harmonize] if harmonize else [])

    def read(folder):
        xio = _io()
        sidecar = json.loads((folder / "sct.json").read_text(encoding="utf-8"))
        spread = folder / "sct_uncertainty.nrrd"
        return finish(SimpleNamespace(
            sct=xio.read_volume(folder / "sct.nrrd"), drrs=_radiographs(folder, "sct_{view}_input.nrrd"),
            consistency=sidecar.get("consistency") or {}, info=sidecar,
            uncertainty=xio.read_volume(spread, require_hu=False) if spread.is_file() else None))

    return process.CommandTask(prepare, read, name="XRayToCT reconstruction")


def put_reconstruction(result: Any, *, model: str, scene, source_name: str, ct_node=None, ap_node=None,
                       lateral_node=None, output_node=None, uncertainty_node=None):
    """An :class:`~XRayToCTLib.inference.ReconstructionResult` (or what
    :func:`reconstruction_task` read) into the scene: the sCT into ``output_node`` or a new
    ``"<source> sCT (synthetic)"`` node, labelled synthetic with its scores and provenance; for
    a CT input (``ct_node``) the images the model saw into the AP/lateral nodes (DRRs of the
    CT); the samples' spread, when there is one, into ``uncertainty_node`` or a new node.
    Returns the sCT node."""
    check_in_scene(*(n for n in (ct_node, ap_node, lateral_node) if n is not None))
    node = output_node or scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                                  scene.GenerateUniqueName(mrml.sct_node_name(source_name)))
    inputs = [n for n in (ap_node, lateral_node) if n is not None]
    if ct_node is not None:
        inputs = list(mrml.update_drr_nodes(ct_node, result.drrs, {"ap": ap_node, "lateral": lateral_node}).values())
    found = result.info
    info = {"model": found.get("model", {}).get("name", model), "device": found.get("device"),
            "time_s": found.get("time_s"), "space": found.get("space"), "input_kind": found.get("input_kind"),
            "method": found.get("method"), "field_of_view": found.get("field_of_view")}
    if "refine" in found:
        fit = found["refine"]
        info["refine"] = {"steps": fit.get("steps_run"), "time_s": fit.get("time_s"),
                          "view_error": fit.get("view_error"),
                          "consistency_before": found.get("consistency_before_refine")}
    info.update({key: found[key] for key in ("harmonize", "uncertainty", "sampler") if key in found})
    consistency = {k: v for k, v in result.consistency.items() if not str(k).startswith("_")}
    mrml.update_node_from_sct(node, result.sct, model=str(model), consistency=consistency,
                              source_node=ct_node, input_nodes=inputs, info=info)
    if getattr(result, "uncertainty", None) is not None:
        spread = uncertainty_node or scene.AddNewNodeByClass(
            "vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(f"{node.GetName()} uncertainty (HU)"))
        mrml.update_uncertainty_node(spread, result.uncertainty, node)
    logging.info(f"XRayToCT: {node.GetName()} computed with {model} in {found.get('time_s')} s "
                 f"on {found.get('device')}")
    return node


def compare_task(finish: Callable[[list, Volume], Any], sct: Volume, ground_truth: Volume,
                 spread: Volume | None = None) -> process.CommandTask:
    """``xraytoct compare`` (no picture); ``finish(rows, difference)`` (usually
    :func:`put_comparison`) gets the metric rows and the difference volume."""
    def prepare(folder):
        xio = _io()
        argv = ["compare", xio.write_volume(sct, folder / "sct.nrrd", compress=False),
                xio.write_volume(ground_truth, folder / "ground_truth.nrrd", compress=False),
                "--out", folder / "compare", "--no-picture"]
        if spread is not None:
            argv += ["--uncertainty", xio.write_volume(spread, folder / "spread.nrrd", compress=False)]
        return argv

    def read(folder):
        metrics = json.loads((folder / "compare" / "metrics.json").read_text(encoding="utf-8"))
        return finish(metrics["rows"], _io().read_volume(folder / "compare" / "difference.nrrd", require_hu=False))

    return process.CommandTask(prepare, read, name="XRayToCT comparison")


def put_comparison(rows: list, difference: Volume, sct_node, gt_node, *, difference_node=None, table_node=None,
                   opacity: float = 0.5, show_layout: bool = True) -> dict[str, Any]:
    """A comparison into the scene: the rows into ``table_node`` (or a new table), the
    difference into ``difference_node`` (or a new node; diverging colours with a legend), the
    compare layout registered with the scene's layout node (``show_layout``: switched to) and
    its views linked. Returns ``{"difference": node, "table": node, "rows": rows}``."""
    check_in_scene(sct_node, gt_node)
    scene = sct_node.GetScene()
    table = table_node or scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(
        f"{sct_node.GetName()} vs {gt_node.GetName()} metrics"))
    mrml.update_metrics_table(table, rows)
    difference_node = difference_node or scene.AddNewNodeByClass(
        "vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(f"{sct_node.GetName()} - {gt_node.GetName()} (HU)"))
    mrml.update_difference_node(difference_node, sct_node, gt_node, difference=difference)
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layout is not None:
        mrml.register_compare_layout(layout, show=show_layout)
    mrml.link_compare_views(scene, sct_node, gt_node, difference_node, opacity=opacity)
    return {"difference": difference_node, "table": table, "rows": rows}

"""The Plastimatch DRR backend: ``plastimatch drr`` (PyPI package ``plastimatch``) renders a
volume at exactly the geometry and HU conversion of :class:`~XRayToCTLib.drr.DRR`, as the
reference for cross-checks (Testing/test_drr.py, benchmarks/drr.py) and as the CLI's
``plastimatch`` backend."""
from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .constants import AIR_HU
from .drr import radiograph
from .errors import XRayToCTError
from .geometry import Grid, ProjectionGeometry, Radiograph, Volume
from .io import volume_to_sitk


def plastimatch_executable() -> str | None:
    """Path of the ``plastimatch`` program (PyPI package ``plastimatch``), or None."""
    exe = shutil.which("plastimatch")
    if exe is None:
        cand = Path(sys.executable).with_name("plastimatch")
        exe = str(cand) if cand.exists() else None
    return exe


def _read_pfm(path: Path) -> np.ndarray:
    with open(path, "rb") as fh:
        kind = fh.readline().strip()
        if kind != b"Pf":
            raise XRayToCTError(f"{path}: not a greyscale PFM file")
        w, h = (int(x) for x in fh.readline().split())
        scale = float(fh.readline())
        data = np.fromfile(fh, dtype="<f4" if scale < 0 else ">f4", count=w * h)
    return data.reshape(h, w).astype(np.float32)


def drr_command(exe: str, ct: Path, prefix: Path, geom: ProjectionGeometry, *,
                algorithm: str = "exact", exponential: bool = False,
                threads: str = "cpu") -> list[str]:
    """The ``plastimatch drr`` command line rendering the LPS-aligned CT file ``ct`` at
    ``geom`` (HU conversion ``preprocess``, as :func:`~XRayToCTLib.drr.hu_to_mu`) into
    ``<prefix>0000.pfm``."""
    args = [exe, "drr", "-I", str(ct), "-O", str(prefix), "-t", "pfm",
            "-i", algorithm, "-P", "preprocess", "-A", threads,
            "-r", f"{geom.pixels[0]} {geom.pixels[1]}",
            "-z", f"{geom.detector_size[0]} {geom.detector_size[1]}",
            "--sad", f"{geom.sad}", "--sid", f"{geom.sid}",
            "-o", " ".join(f"{x:.6f}" for x in geom.isocenter),
            "-n", " ".join(f"{x:.9f}" for x in geom.normal),
            "--vup", " ".join(f"{x:.9f}" for x in geom.vup)]
    return (args + ["-e"]) if exponential else args


def render_plastimatch(volume: Volume, geom: ProjectionGeometry, *, algorithm: str = "exact",
                       exponential: bool = False, threads: str = "cpu") -> Radiograph:
    """Render one DRR with ``plastimatch drr`` at exactly the same geometry and HU
    conversion as the torch renderer (the reference for cross-checks)."""
    exe = plastimatch_executable()
    if exe is None:
        raise XRayToCTError("the plastimatch backend needs the 'plastimatch' program: "
                            "pip install plastimatch")
    image = volume_to_sitk(volume.with_array(np.asarray(volume.array, dtype=np.float32)))
    if not np.allclose(volume.direction, np.eye(3), atol=1e-6):
        image = _axis_aligned(image)
    with tempfile.TemporaryDirectory(prefix="xraytoct-pm-") as tmp:
        vol_path = Path(tmp) / "ct.mha"
        sitk.WriteImage(image, str(vol_path))
        prefix = Path(tmp) / "drr"
        proc = subprocess.run(drr_command(exe, vol_path, prefix, geom, algorithm=algorithm,
                                          exponential=exponential, threads=threads),
                              capture_output=True, text=True)
        out = prefix.with_name("drr0000.pfm")
        if proc.returncode != 0 or not out.exists():
            raise XRayToCTError(f"plastimatch drr failed ({proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip()[-300:]}")
        img = _read_pfm(out)
    # Plastimatch writes row 0 at the top (along --vup) and columns along vup x nrm, the
    # same convention as this project (checked by Testing/test_drr.py): no flip.
    return radiograph(img, geom, "plastimatch", volume, exponential)


def render_views(volume: Volume, geometries: dict[str, ProjectionGeometry],
                 **kwargs) -> dict[str, Radiograph]:
    """:func:`render_plastimatch` of every view: ``{view: Radiograph}``."""
    return {v: render_plastimatch(volume, g, **kwargs) for v, g in geometries.items()}


def _axis_aligned(image: sitk.Image) -> sitk.Image:
    """Plastimatch's ray tracer ignores direction cosines: resample an oblique or non-LPS
    volume (linearly, through physical space) onto an LPS-aligned grid that covers it."""
    grid = Grid(image.GetSize(), image.GetSpacing(), image.GetOrigin(),
                np.asarray(image.GetDirection()).reshape(3, 3))
    corners = grid.corners()
    sp = min(image.GetSpacing())
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    size = [int(math.ceil((h - l) / sp)) for l, h in zip(lo, hi)]
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetSpacing((sp, sp, sp))
    ref.SetOrigin(tuple(lo + sp / 2))
    return sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, AIR_HU, sitk.sitkFloat32)

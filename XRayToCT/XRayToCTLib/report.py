"""Pictures and reports people look at: PNG previews of volumes and radiographs.

Display conventions: axial slices are shown as radiologists read them (patient's right on
the image's left, anterior at the top), coronal and sagittal with superior at the top;
radiographs as stored (row 0 = top, see :mod:`XRayToCTLib.geometry`).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .geometry import Volume


def to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip to [lo, hi] and map linearly to 0..255."""
    scaled = (np.asarray(values, dtype=np.float32) - lo) / max(hi - lo, 1e-12)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an 8-bit grey image atomically."""
    from PIL import Image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def orthogonal_slices(volume: Volume, point=None) -> dict[str, np.ndarray]:
    """Axial, coronal and sagittal slices through ``point`` (LPS; default the centre) of a
    volume resampled onto an LPS-aligned grid, oriented for display (see module doc) with
    square pixels."""
    import SimpleITK as sitk

    from .io import sitk_to_volume, volume_to_sitk
    img = volume_to_sitk(volume.with_array(np.asarray(volume.array, dtype=np.float32)))
    if not np.allclose(volume.direction, np.eye(3)) or len(set(volume.spacing)) > 1:
        corners = volume.corners()
        sp = min(volume.spacing)
        lo, hi = corners.min(0), corners.max(0)
        size = [max(1, int(np.ceil((h - l) / sp))) for l, h in zip(lo, hi)]
        ref = sitk.Image(size, sitk.sitkFloat32)
        ref.SetSpacing((sp,) * 3)
        ref.SetOrigin(tuple(lo + sp / 2))
        img = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, float(volume.array.min()))
    v = sitk_to_volume(img)
    p = v.center if point is None else np.asarray(point, dtype=float)
    i, j, k = np.clip(np.round(v.continuous_index(p[None])[0]).astype(int), 0,
                      np.asarray(v.size) - 1)
    a = v.array  # [k (S), j (P), i (L)]
    return {"axial": a[k, :, ::-1],         # rows anterior->posterior, cols right->left flipped: R on the left
            "coronal": a[::-1, j, ::-1],     # rows superior->inferior, patient's right on the left
            "sagittal": a[::-1, :, i]}       # rows superior->inferior, anterior on the left


def triptych(volume: Volume, lo: float, hi: float, point=None, gap: int = 4) -> np.ndarray:
    """Axial | coronal | sagittal side by side, windowed to [lo, hi], as 8-bit grey."""
    views = [to_uint8(s, lo, hi) for s in orthogonal_slices(volume, point).values()]
    h = max(v.shape[0] for v in views)
    padded = [np.pad(v, ((0, h - v.shape[0]), (0, gap))) for v in views]
    return np.concatenate(padded, axis=1)[:, :-gap]

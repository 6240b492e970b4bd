"""Reading and writing CTs and radiographs with exact geometry (SimpleITK, pydicom).

Everything returned is a :class:`~XRayToCTLib.geometry.Volume` or
:class:`~XRayToCTLib.geometry.Radiograph` in LPS; bad input raises
:class:`~XRayToCTLib.errors.InputError` with one line naming the file and the problem.
Writers never leave a half-written file: they write to a temporary name and rename.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .geometry import Volume


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """The SimpleITK image of a Volume (same voxels, spacing, origin, direction)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    img.SetSpacing(volume.spacing)
    img.SetOrigin(volume.origin)
    img.SetDirection(tuple(float(x) for x in volume.direction.reshape(-1)))
    return img


def sitk_to_volume(image: sitk.Image, metadata: dict | None = None) -> Volume:
    """A Volume from a 3D SimpleITK image (geometry copied exactly)."""
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    return Volume(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(),
                  np.asarray(image.GetDirection(), dtype=float).reshape(3, 3),
                  dict(metadata or {}))

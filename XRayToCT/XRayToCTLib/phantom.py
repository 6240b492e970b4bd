"""A synthetic head CT in HU, deterministic by seed, for demos and tests.

An analytic head (LPS, centred on the origin, face towards -y, vertex towards +z): scalp and
subcutaneous fat; a skull of outer table, diploe and inner table; grey and white matter
with a folded cortical ribbon and CSF in the sulci; lateral ventricles (normal to
hydrocephalic); frontal and maxillary sinuses, orbits with globes; a dense skull base; a
neck; scanner noise and partial-volume blur. Every size and density varies with the seed.

It stands in for a real head where none can be shipped (the demo, the Slicer self-test,
fast tests). HU ranges per tissue are in :data:`TISSUE_HU`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .geometry import Volume, rotation_matrix

TISSUE_HU = {
    "air": (-1000, -1000), "fat": (-110, -70), "scalp": (20, 60), "cortical_bone": (1300, 1900),
    "diploe": (450, 800), "grey_matter": (34, 44), "white_matter": (22, 30), "csf": (0, 15),
    "globe": (5, 15), "skull_base": (1500, 2000),
}


def _ellipsoid(p: np.ndarray, center, radii) -> np.ndarray:
    """Normalised radius of points ``p`` (..., 3) in an axis-aligned ellipsoid (1 = surface)."""
    q = (p - np.asarray(center, dtype=np.float32)) / np.asarray(radii, dtype=np.float32)
    return np.sqrt(np.sum(q * q, axis=-1))


def head_phantom(size: int | Sequence[int] = 256, spacing: float | Sequence[float] = 1.0,
                 seed: int = 0, *, ventricle_scale: float | None = None,
                 noise_hu: float = 4.0, rotation_deg: Sequence[float] = (0.0, 0.0, 0.0),
                 translation_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> Volume:
    """Generate a head CT.

    Args:
        size: voxels per axis (an int for a cube, or ``(i, j, k)``).
        spacing: mm per voxel (a float, or ``(i, j, k)``).
        seed: random seed; the same seed gives the same head.
        ventricle_scale: 1 = normal ventricles, up to about 2.2 = marked hydrocephalus;
            ``None`` draws one from the seed.
        noise_hu: standard deviation of the Gaussian scanner noise.
        rotation_deg, translation_mm: pose of the head in the field of view (LPS, rotation
            about x, then y, then z).
    """
    rng = np.random.default_rng(seed)
    n = np.broadcast_to(np.asarray(size, dtype=int), (3,))
    sp = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
    if np.any(n < 2) or np.any(sp <= 0):
        raise ValueError(f"need size >= 2 and spacing > 0, got {size}, {spacing}")
    origin = -(n - 1) * sp / 2.0
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731

    # anatomy parameters (mm, HU)
    head_r = np.array([u(68, 80), u(88, 100), u(92, 104)])  # half width, length, height
    head_c = np.array([0.0, u(-4, 4), u(8, 18)])
    scalp, skull = u(4, 7), u(5, 8)
    vent = u(0.8, 1.6) if ventricle_scale is None else float(ventricle_scale)
    hu = {k: u(*v) for k, v in TISSUE_HU.items()}
    fold_f = u(0.09, 0.13)
    phases = rng.uniform(0, 2 * np.pi, 3)

    rot = rotation_matrix(rotation_deg)
    shift = np.asarray(translation_mm, dtype=float)
    out = np.empty(tuple(n[::-1]), dtype=np.float32)
    ii, jj = np.meshgrid(np.arange(n[0]), np.arange(n[1]), indexing="xy")
    for k in range(n[2]):  # slice by slice: bounded memory at 256^3 and beyond
        world = np.stack([origin[0] + ii * sp[0], origin[1] + jj * sp[1],
                          np.full(ii.shape, origin[2] + k * sp[2])], axis=-1)
        p = ((world - shift) @ rot).astype(np.float32)  # head frame = inverse pose
        out[k] = _head_slice(p, head_r, head_c, scalp, skull, vent, hu, fold_f, phases)

    vol = Volume(out, tuple(sp), tuple(origin), np.eye(3),
                 {"source": f"phantom(seed={seed})", "kind": "synthetic head phantom",
                  "ventricle_scale": vent, "units": "HU"})
    vol.array = _acquire(vol.array, sp, noise_hu, rng)
    return vol


def _head_slice(p, head_r, head_c, scalp, skull, vent, hu, fold_f, phases) -> np.ndarray:
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    img = np.full(x.shape, -1000.0, dtype=np.float32)

    # outline: an ellipsoid flattened at the face and widened at the occiput, plus a neck
    r_head = _ellipsoid(p, head_c, head_r) * (1.0 + 0.06 * np.tanh(-y / 40.0))
    neck = (np.sqrt((x / 55.0) ** 2 + ((y - 10.0) / 60.0) ** 2) < 1.0) & (z < head_c[2] - 40)
    inside = (r_head < 1.0) | neck
    img[inside] = hu["fat"]
    mean_r = float(np.mean(head_r))
    depth = (1.0 - r_head) * mean_r  # approx. distance below the skin (mm)
    img[inside & ((depth < 2.0) | neck)] = hu["scalp"]
    img[neck & (np.sqrt((x / 12.0) ** 2 + ((y - 25.0) / 14.0) ** 2) < 1)] = hu["cortical_bone"] * 0.7

    # skull shell: outer table / diploe / inner table
    top = z > head_c[2] - 0.25 * head_r[2]
    in_skull = (depth >= scalp) & (r_head < 1.0)
    shell = in_skull & (depth < scalp + skull)
    table = skull * 0.3
    img[shell] = hu["diploe"]
    img[shell & ((depth < scalp + table) | (depth > scalp + skull - table))] = hu["cortical_bone"]

    # intracranial space: above the skull base plane, posterior to the face
    brain = in_skull & (depth >= scalp + skull) & (z > head_c[2] - 0.55 * head_r[2] - 0.25 * y)
    img[in_skull & (depth >= scalp + skull) & ~brain] = hu["scalp"]  # face/soft tissue
    base = in_skull & ~brain & (np.abs(z - (head_c[2] - 0.55 * head_r[2] - 0.25 * y)) < 4.0)
    img[base] = hu["skull_base"]
    # cortex: grey ribbon with gyri (a smooth folding field), CSF in the sulci
    fold = (np.sin(fold_f * x + phases[0]) * np.sin(fold_f * y + phases[1])
            + 0.6 * np.sin(0.7 * fold_f * z + phases[2]))
    bdepth = depth - scalp - skull
    wm = brain & (bdepth > 9.0 + 3.5 * fold)
    img[brain] = hu["grey_matter"]
    img[brain & (bdepth < 1.5)] = hu["csf"]
    img[brain & (fold > 1.1) & (bdepth < 8.0)] = hu["csf"]
    img[wm] = hu["white_matter"]
    # falx: a thin midline CSF/dura sheet in the upper brain
    img[brain & (np.abs(x) < 1.0) & top] = hu["csf"] + 20.0
    # lateral ventricles
    c = head_c + np.array([0.0, -2.0, 4.0])
    for side in (-1.0, 1.0):
        r_v = _ellipsoid(p, c + np.array([side * 9.0 * vent ** 0.5, 0, 0]),
                         np.array([5.0 * vent, 26.0 + 4 * vent, 9.0 * vent]))
        img[brain & (r_v < 1.0)] = hu["csf"]
    # face: orbits with globes, frontal and maxillary sinuses
    for side in (-1.0, 1.0):
        orbit = _ellipsoid(p, head_c + np.array([side * 32.0, -head_r[1] + 22.0, -0.35 * head_r[2]]),
                           np.array([17.0, 20.0, 15.0])) < 1.0
        img[orbit & inside] = hu["fat"]
        globe = _ellipsoid(p, head_c + np.array([side * 32.0, -head_r[1] + 16.0, -0.35 * head_r[2]]),
                           np.array([11.5, 11.5, 11.5])) < 1.0
        img[globe & inside] = hu["globe"]
        maxi = _ellipsoid(p, head_c + np.array([side * 22.0, -head_r[1] + 38.0, -0.72 * head_r[2]]),
                          np.array([13.0, 17.0, 16.0])) < 1.0
        img[maxi & inside] = -1000.0
    frontal = _ellipsoid(p, head_c + np.array([0.0, -head_r[1] + 12.0, -0.05 * head_r[2]]),
                         np.array([16.0, 6.0, 10.0])) < 1.0
    img[frontal & shell] = -1000.0
    return img


def _acquire(img: np.ndarray, spacing, noise_hu: float, rng) -> np.ndarray:
    """Partial-volume blur (Gaussian, sigma half a voxel, at least 0.6 mm) and scanner noise, clipped to [-1024, 3071]."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(img)
    image.SetSpacing(tuple(float(s) for s in spacing))
    sigma = [max(0.6, 0.5 * float(s)) for s in spacing]  # scanner PSF ~ half a voxel
    out = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, sigma))
    if noise_hu > 0:
        out = out + rng.normal(0.0, noise_hu, size=out.shape).astype(np.float32)
    return np.clip(out, -1024, 3071).astype(np.float32)

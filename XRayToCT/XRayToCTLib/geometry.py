"""The one place that knows coordinate systems.

Conventions (used by every other module; change them here or nowhere):

* Physical space is **LPS** (DICOM/ITK patient space): +x towards the patient's Left,
  +y towards Posterior, +z towards Superior, in millimetres. Slicer works in **RAS**;
  the only conversion is :data:`LPS_TO_RAS` (``diag(-1, -1, 1)``) used by
  :meth:`Volume.ijk_to_ras` / :meth:`Volume.from_ijk_to_ras`.
* A :class:`Volume` holds ``array`` indexed ``[k, j, i]`` (slice, row, column), exactly as
  ``SimpleITK.GetArrayFromImage`` returns it; ``spacing`` and ``origin`` are given in
  ITK order ``(i, j, k)`` / ``(x, y, z)``; ``direction`` is a 3x3 matrix whose *columns*
  are the LPS directions of the i, j and k axes. Voxel ``(i, j, k)`` sits at
  ``origin + direction @ (spacing * (i, j, k))``.
* A :class:`ProjectionGeometry` is a perspective (cone-beam) X-ray set-up: a point source
  at ``isocenter + sad * normal`` and a flat detector centred at
  ``isocenter - (sid - sad) * normal``, perpendicular to ``normal``. ``normal`` points from
  the isocentre towards the source (Plastimatch's ``--nrm``). Detector row 0 is the row
  furthest along ``vup`` (the top of the image); columns run along
  ``col_dir = vup x normal``, which is the conventional display of a radiograph *seen from
  the source*: in the AP preset the patient's left is on the right of the image, in the
  lateral preset (source on the patient's right) the face is on the right of the image.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Sequence

import numpy as np

from .constants import FIELD_OF_VIEW_MM

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
"""Linear map between LPS and RAS coordinates (it is its own inverse)."""


def _as3(value: Sequence[float], name: str) -> tuple[float, float, float]:
    arr = np.asarray(value, dtype=float).reshape(-1)
    if arr.size != 3 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be three finite numbers, got {value!r}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def lps_to_ras_points(points: np.ndarray) -> np.ndarray:
    """Convert an ``(..., 3)`` array of LPS points to RAS (or back: the map is an involution)."""
    return np.asarray(points, dtype=float) @ LPS_TO_RAS.T


def as_triple(value: float | Sequence[float], name: str) -> tuple[float, float, float]:
    """One number repeated three times, or three numbers."""
    arr = np.asarray(value, dtype=float).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    return _as3(arr, name)


class Grid:
    """The geometry of a voxel grid, without voxels: numpy only, in LPS millimetres.

    Args:
        size: voxels along i, j, k (ITK order).
        spacing: voxel size along i, j, k in mm (all > 0).
        origin: LPS position of voxel ``(0, 0, 0)`` in mm.
        direction: 3x3 matrix, columns = LPS unit directions of the i, j, k axes.

    Voxel ``(i, j, k)`` sits at ``origin + direction @ (spacing * (i, j, k))``; an array on
    the grid is indexed ``[k, j, i]`` (:attr:`shape`). This class is the one place that
    converts between indices and millimetres: every other module asks a Grid.
    A :class:`Volume` is a Grid plus an array, so a Volume is accepted wherever a Grid is.
    """

    def __init__(self, size: Sequence[int], spacing: float | Sequence[float] = (1.0, 1.0, 1.0),
                 origin: Sequence[float] = (0.0, 0.0, 0.0), direction: Any = None) -> None:
        self._set_size(size)
        self._set_geometry(spacing, origin, direction)

    # -- validation (shared with Volume) -------------------------------------------------
    def _set_size(self, size: Sequence[int]) -> None:
        s = tuple(int(x) for x in np.asarray(size).reshape(-1))
        if len(s) != 3 or min(s) < 1:
            raise ValueError(f"grid size must be three positive integers, got {size!r}")
        self._size = s

    def _set_geometry(self, spacing: Any, origin: Any, direction: Any) -> None:
        self.spacing = as_triple(spacing, "spacing")
        if min(self.spacing) <= 0:
            raise ValueError(f"spacing must be positive, got {self.spacing}")
        self.origin = _as3(origin, "origin")
        d = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise ValueError("direction must be an orthonormal 3x3 matrix")
        self.direction = d

    # -- construction --------------------------------------------------------------------
    @classmethod
    def of(cls, obj: "Grid | dict[str, Any]") -> "Grid":
        """The grid of a Grid or a Volume (a plain :class:`Grid`, no voxels), or of a
        :meth:`geometry_dict`."""
        if isinstance(obj, Grid):
            return Grid(obj.size, obj.spacing, obj.origin, obj.direction.copy())
        if isinstance(obj, dict):
            return cls.from_dict(obj)
        raise TypeError(f"cannot take a grid from {type(obj).__name__}")

    @classmethod
    def centered(cls, center: Sequence[float], size: int | Sequence[int] = 256,
                 spacing: float | Sequence[float] = 1.0, direction: Any = None) -> "Grid":
        """``size`` voxels of ``spacing`` mm whose geometric centre is ``center`` (LPS);
        identity direction unless given."""
        n = np.asarray(as_triple(size, "size"), dtype=float)
        sp = np.asarray(as_triple(spacing, "spacing"), dtype=float)
        d = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
        origin = np.asarray(center, dtype=float) - d @ (sp * (n - 1.0) / 2.0)
        return Grid(tuple(int(x) for x in n), tuple(sp), tuple(origin), d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Grid":
        """Inverse of :meth:`geometry_dict`."""
        return Grid(tuple(d["size"]), tuple(d["spacing"]), tuple(d["origin"]),
                    np.asarray(d.get("direction", np.eye(3)), dtype=float))

    # -- shape ---------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k (ITK order)."""
        return self._size

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(k, j, i)`` of a volume on this grid."""
        i, j, k = self.size
        return (k, j, i)

    @property
    def grid(self) -> "Grid":
        """The geometry alone (for a Volume: without its voxels)."""
        return Grid.of(self)

    def volume(self, fill: float = 0.0, dtype: Any = np.float32,
               metadata: dict | None = None) -> "Volume":
        """A Volume on this grid filled with ``fill``."""
        return Volume(np.full(self.shape, fill, dtype=dtype), self.spacing, self.origin,
                      self.direction.copy(), dict(metadata or {}))

    def with_array(self, array: np.ndarray, **metadata: Any) -> "Volume":
        """A Volume of ``array`` (shaped :attr:`shape`) on this grid."""
        if np.shape(array) != self.shape:
            raise ValueError(f"shape {np.shape(array)} differs from the grid {self.shape}")
        return Volume(array, self.spacing, self.origin, self.direction.copy(), dict(metadata))

    def same_as(self, other: "Grid | dict[str, Any]", atol: float = 1e-4) -> bool:
        """True when both grids have the same size and (to ``atol`` mm) geometry."""
        o = other if isinstance(other, Grid) else Grid.of(other)
        return (tuple(self.size) == tuple(o.size)
                and np.allclose(self.spacing, o.spacing, atol=atol)
                and np.allclose(self.origin, o.origin, atol=atol)
                and np.allclose(self.direction, o.direction, atol=atol))

    # -- index <-> physical --------------------------------------------------------------
    def index_to_lps(self) -> np.ndarray:
        """4x4 matrix taking homogeneous ``(i, j, k, 1)`` to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def lps_to_index(self) -> np.ndarray:
        """4x4 matrix taking homogeneous LPS millimetres to continuous ``(i, j, k, 1)``."""
        return np.linalg.inv(self.index_to_lps())

    def ijk_to_ras(self) -> np.ndarray:
        """Slicer's IJKToRAS matrix (the only LPS->RAS conversion in the project)."""
        m = self.index_to_lps()
        m[:3, :] = LPS_TO_RAS @ m[:3, :]
        return m

    def physical_points(self, ijk: np.ndarray) -> np.ndarray:
        """LPS positions of ``(N, 3)`` continuous indices ``(i, j, k)``."""
        m = self.index_to_lps()
        return np.asarray(ijk, dtype=float) @ m[:3, :3].T + m[:3, 3]

    def continuous_index(self, points: np.ndarray) -> np.ndarray:
        """Continuous ``(i, j, k)`` indices of ``(N, 3)`` LPS points."""
        m = self.index_to_lps()
        return (np.asarray(points, dtype=float) - m[:3, 3]) @ np.linalg.inv(m[:3, :3]).T

    def voxel_points(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """LPS positions ``(n, 3)`` (float64) of the voxels ``start:stop`` in flat ``[k, j, i]``
        (C) order: row ``r`` is the centre of ``array.reshape(-1)[start + r]``."""
        k, j, i = self.shape
        flat = np.arange(start, k * j * i if stop is None else stop, dtype=np.int64)
        kk, rem = np.divmod(flat, i * j)
        jj, ii = np.divmod(rem, i)
        return self.physical_points(np.stack([ii, jj, kk], axis=-1).astype(float))

    @property
    def center(self) -> np.ndarray:
        """LPS position of the geometric centre of the voxel grid."""
        return self.physical_points(((np.asarray(self.size, dtype=float) - 1.0) / 2.0)[None])[0]

    @property
    def field_mm(self) -> tuple[float, float, float]:
        """Extent of the grid along i, j, k in mm (outer voxel edges)."""
        return tuple(float(n * s) for n, s in zip(self.size, self.spacing))  # type: ignore

    def corners(self) -> np.ndarray:
        """LPS positions of the 8 outer corners of the grid (voxel edges, not centres)."""
        lo = np.full(3, -0.5)
        hi = np.asarray(self.size, dtype=float) - 0.5
        c = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                      for z in (lo[2], hi[2])])
        return self.physical_points(c)

    def resized(self, size: int | Sequence[int]) -> "Grid":
        """The same field (outer corners, centre, direction) on ``size`` voxels: spacing
        scaled by ``old_size / size`` (256 voxels of 1 mm -> 128 voxels of 2 mm)."""
        n_new = np.asarray(as_triple(size, "size"), float)
        if np.any(n_new < 1) or np.any(n_new != np.round(n_new)):
            raise ValueError(f"size must be positive integers, got {size!r}")
        sp_old = np.asarray(self.spacing)
        factor = np.asarray(self.size, float) / n_new
        origin = np.asarray(self.origin) + self.direction @ (sp_old * (factor - 1.0) / 2.0)
        return Grid(tuple(int(n) for n in n_new), tuple(sp_old * factor), tuple(origin),
                    self.direction.copy())

    def coarsened(self, spacing: float) -> "Grid":
        """A grid with the same centre and direction and no axis finer than ``spacing`` mm
        (coarser axes kept), covering at most the voxel centres of this one."""
        old = np.asarray(self.spacing, float)
        new = np.maximum(old, float(spacing))
        extent = (np.asarray(self.size, float) - 1.0) * old
        n_new = np.floor(extent / new + 1e-6).astype(int) + 1
        origin = np.asarray(self.origin) + self.direction @ ((extent - (n_new - 1) * new) / 2.0)
        return Grid(tuple(int(n) for n in n_new), tuple(new), tuple(origin), self.direction.copy())

    def translated(self, shift: Sequence[float]) -> "Grid":
        """The same grid moved by ``shift`` mm (LPS)."""
        return Grid(self.size, self.spacing, tuple(np.asarray(self.origin) + _as3(shift, "shift")),
                    self.direction.copy())

    def geometry_dict(self) -> dict[str, Any]:
        """JSON-friendly geometry (:meth:`from_dict` reads it back)."""
        return {"size": list(self.size), "spacing": list(self.spacing),
                "origin": list(self.origin), "direction": self.direction.tolist(),
                "space": "LPS"}

    to_dict = geometry_dict

    def __repr__(self) -> str:
        return (f"Grid(size={self.size}, spacing={self.spacing}, origin={self.origin}, "
                f"direction={self.direction.round(6).tolist()})")


class Volume(Grid):
    """A 3D image with its full geometry, in LPS: a :class:`Grid` plus an array.

    Args:
        array: voxel values indexed ``[k, j, i]``.
        spacing: voxel size along i, j, k in mm (all > 0).
        origin: LPS position of voxel ``(0, 0, 0)`` in mm.
        direction: 3x3 matrix, columns = LPS unit directions of the i, j, k axes.
        metadata: free-form key/value pairs (source file, DICOM tags, window, ...).
    """

    def __init__(self, array: np.ndarray, spacing: float | Sequence[float] = (1.0, 1.0, 1.0),
                 origin: Sequence[float] = (0.0, 0.0, 0.0), direction: Any = None,
                 metadata: dict[str, Any] | None = None) -> None:
        self.array = array
        self._set_geometry(spacing, origin, direction)
        self.metadata = {} if metadata is None else metadata

    @property
    def array(self) -> np.ndarray:
        return self._array

    @array.setter
    def array(self, value: np.ndarray) -> None:
        arr = np.asarray(value)
        if arr.ndim != 3:
            raise ValueError(f"a Volume needs a 3D array, got shape {arr.shape}")
        self._array = arr

    @property
    def size(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k (ITK order)."""
        k, j, i = self._array.shape
        return (i, j, k)

    def with_array(self, array: np.ndarray, **metadata: Any) -> "Volume":
        """A volume on the same grid with other voxel values."""
        if np.shape(array) != self.array.shape:
            raise ValueError(f"shape {np.shape(array)} differs from the grid {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction.copy(),
                      {**self.metadata, **metadata})

    def translated(self, shift: Sequence[float], **metadata: Any) -> "Volume":  # type: ignore[override]
        """The same voxels with the grid moved by ``shift`` mm (LPS)."""
        g = Grid.translated(self, shift)
        return Volume(self.array, g.spacing, g.origin, g.direction, {**self.metadata, **metadata})

    @classmethod
    def from_ijk_to_ras(cls, array: np.ndarray, ijk_to_ras: np.ndarray,
                        metadata: dict[str, Any] | None = None) -> "Volume":
        """Build a Volume from an array ``[k, j, i]`` and Slicer's 4x4 IJKToRAS matrix."""
        m = np.asarray(ijk_to_ras, dtype=float).reshape(4, 4)
        lin = LPS_TO_RAS @ m[:3, :3]
        spacing = np.linalg.norm(lin, axis=0)
        if np.any(spacing <= 0):
            raise ValueError("IJKToRAS matrix has a zero-length axis")
        return cls(array, tuple(spacing), tuple(LPS_TO_RAS @ m[:3, 3]), lin / spacing,
                   dict(metadata or {}))

    def __repr__(self) -> str:
        return (f"Volume(shape={self.array.shape}, dtype={self.array.dtype}, "
                f"spacing={self.spacing}, origin={self.origin})")


def _unit(v: Sequence[float], name: str) -> np.ndarray:
    a = np.asarray(_as3(v, name))
    n = np.linalg.norm(a)
    if n == 0:
        raise ValueError(f"{name} must not be the zero vector")
    return a / n


@dataclasses.dataclass(frozen=True)
class ProjectionGeometry:
    """A perspective X-ray projection (point source, flat detector), in LPS millimetres.

    Args:
        sad: source-to-axis (isocentre) distance.
        sid: source-to-image (detector) distance, ``> sad``.
        pixels: detector ``(rows, cols)``.
        detector_size: physical detector ``(height, width)`` in mm.
        isocenter: LPS point the central ray passes through.
        normal: unit vector from the isocentre towards the source.
        vup: direction of the detector's top row (made orthogonal to ``normal``).
        view: a name for the view (``"ap"``, ``"lateral"``, ...).
    """

    sad: float = 1000.0
    sid: float = 1500.0
    pixels: tuple[int, int] = (128, 128)
    detector_size: tuple[float, float] = (400.0, 400.0)
    isocenter: tuple[float, float, float] = (0.0, 0.0, 0.0)
    normal: tuple[float, float, float] = (0.0, -1.0, 0.0)
    vup: tuple[float, float, float] = (0.0, 0.0, 1.0)
    view: str = "ap"

    def __post_init__(self) -> None:
        if not (self.sad > 0 and self.sid > self.sad):
            raise ValueError(f"need 0 < sad < sid, got sad={self.sad}, sid={self.sid}")
        rows, cols = (int(p) for p in self.pixels)
        if rows < 1 or cols < 1:
            raise ValueError(f"detector pixels must be positive, got {self.pixels}")
        h, w = (float(s) for s in self.detector_size)
        if not (h > 0 and w > 0):
            raise ValueError(f"detector size must be positive, got {self.detector_size}")
        n = _unit(self.normal, "normal")
        up = _unit(self.vup, "vup")
        up = up - n * float(up @ n)
        if np.linalg.norm(up) < 1e-6:
            raise ValueError("vup must not be parallel to normal")
        up = up / np.linalg.norm(up)
        object.__setattr__(self, "pixels", (rows, cols))
        object.__setattr__(self, "detector_size", (h, w))
        object.__setattr__(self, "isocenter", _as3(self.isocenter, "isocenter"))
        object.__setattr__(self, "normal", tuple(float(x) for x in n))
        object.__setattr__(self, "vup", tuple(float(x) for x in up))
        object.__setattr__(self, "sad", float(self.sad))
        object.__setattr__(self, "sid", float(self.sid))

    # -- derived quantities ------------------------------------------------------------
    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """Detector pixel size ``(row, col)`` in mm, at the detector plane."""
        return (self.detector_size[0] / self.pixels[0], self.detector_size[1] / self.pixels[1])

    @property
    def col_dir(self) -> np.ndarray:
        """LPS direction in which the column index grows: ``vup x normal``."""
        return np.cross(np.asarray(self.vup), np.asarray(self.normal))

    @property
    def row_dir(self) -> np.ndarray:
        """LPS direction in which the row index grows (``-vup``)."""
        return -np.asarray(self.vup)

    @property
    def source(self) -> np.ndarray:
        return np.asarray(self.isocenter) + self.sad * np.asarray(self.normal)

    @property
    def detector_center(self) -> np.ndarray:
        return np.asarray(self.isocenter) - (self.sid - self.sad) * np.asarray(self.normal)

    @property
    def magnification(self) -> float:
        """Magnification at the isocentre, ``sid / sad``."""
        return self.sid / self.sad

    def detector_origin(self) -> np.ndarray:
        """LPS position of the centre of pixel (row 0, col 0)."""
        rs, cs = self.pixel_spacing
        rows, cols = self.pixels
        return (self.detector_center - self.row_dir * rs * (rows - 1) / 2.0
                - self.col_dir * cs * (cols - 1) / 2.0)

    def detector_direction(self) -> np.ndarray:
        """3x3 matrix, columns = LPS directions of detector column, row, and beam (towards
        the detector). It is right-handed, so the detector is a valid 3D image slice."""
        beam = -np.asarray(self.normal)
        return np.stack([self.col_dir, self.row_dir, beam], axis=1)

    def pixel_centers(self) -> np.ndarray:
        """``(rows, cols, 3)`` LPS positions of every detector pixel centre."""
        rs, cs = self.pixel_spacing
        rows, cols = self.pixels
        r = np.arange(rows, dtype=float)[:, None, None]
        c = np.arange(cols, dtype=float)[None, :, None]
        return self.detector_origin() + r * rs * self.row_dir + c * cs * self.col_dir

    def project(self, points: np.ndarray) -> np.ndarray:
        """Continuous ``(row, col)`` detector coordinates of ``(N, 3)`` LPS points.

        The same formula, in torch, is :func:`project_points_torch` (used by models)."""
        p = np.asarray(points, dtype=float) - self.source
        n = -np.asarray(self.normal)
        depth = p @ n  # distance along the central ray
        scale = self.sid / depth
        rs, cs = self.pixel_spacing
        rows, cols = self.pixels
        u = (p @ self.col_dir) * scale / cs + (cols - 1) / 2.0
        v = (p @ self.row_dir) * scale / rs + (rows - 1) / 2.0
        return np.stack([v, u], axis=-1)

    def projection_matrix(self) -> np.ndarray:
        """3x4 matrix P with ``(col*w, row*w, w) = P @ (x, y, z, 1)`` for LPS points."""
        rs, cs = self.pixel_spacing
        rows, cols = self.pixels
        n = -np.asarray(self.normal)
        r = np.stack([self.col_dir, self.row_dir, n])  # world -> camera rotation
        t = -r @ self.source
        k = np.array([[self.sid / cs, 0, (cols - 1) / 2.0],
                      [0, self.sid / rs, (rows - 1) / 2.0],
                      [0, 0, 1.0]])
        return k @ np.concatenate([r, t[:, None]], axis=1)

    # -- presets -------------------------------------------------------------------------
    def centered_on(self, point: Sequence[float]) -> "ProjectionGeometry":
        """The same geometry with its isocentre moved to ``point`` (LPS)."""
        return dataclasses.replace(self, isocenter=_as3(point, "isocenter"))

    def with_pixels(self, rows: int, cols: int | None = None) -> "ProjectionGeometry":
        return dataclasses.replace(self, pixels=(rows, cols if cols is not None else rows))

    @classmethod
    def preset(cls, view: str, **kwargs: Any) -> "ProjectionGeometry":
        """``"ap"``: source anterior, detector posterior, top = superior, patient's left on
        the image's right. ``"pa"``: the reverse beam. ``"lateral"``: source on the
        patient's right, detector on the left, top = superior, anterior on the image's
        right. Other keyword arguments override the default geometry."""
        normals = {"ap": (0.0, -1.0, 0.0), "pa": (0.0, 1.0, 0.0),
                   "lateral": (-1.0, 0.0, 0.0), "lateral_left": (1.0, 0.0, 0.0)}
        if view not in normals:
            raise ValueError(f"unknown view {view!r}; choose one of {sorted(normals)}")
        kwargs.setdefault("normal", normals[view])
        kwargs.setdefault("vup", (0.0, 0.0, 1.0))
        return cls(view=view, **kwargs)

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {k: list(v) if isinstance(v, tuple) else v
             for k, v in dataclasses.asdict(self).items()}
        d.update({"space": "LPS", "units": "mm",
                  "pixel_spacing": list(self.pixel_spacing),
                  "source": self.source.tolist(),
                  "detector_center": self.detector_center.tolist(),
                  "col_dir": self.col_dir.tolist(), "row_dir": self.row_dir.tolist(),
                  "convention": "normal points from isocenter to source; row 0 is the top "
                                "(along vup); columns run along vup x normal (image seen "
                                "from the source)"})
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProjectionGeometry":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


DEFAULT_SAD = 1000.0
DEFAULT_SID = 1500.0
DEFAULT_DETECTOR_MM = 400.0
DEFAULT_PIXELS = 128


def canonical_grid(size: int, field_mm: float = FIELD_OF_VIEW_MM) -> Grid:
    """The one canonical frame of datasets and models: ``size^3`` voxels covering a cube of
    ``field_mm`` mm (spacing ``field_mm / size``), identity direction, centred on the LPS
    origin (the centre of the grid is point (0, 0, 0)). Every model's output grid, every
    dataset case and every view geometry of a model are expressed in this frame;
    :func:`~XRayToCTLib.preprocess.to_canonical` is the only road into it."""
    n = int(size)
    if n < 1 or n != size:
        raise ValueError(f"canonical grid size must be a positive integer, got {size!r}")
    fov = float(field_mm)
    if not (fov > 0 and math.isfinite(fov)):
        raise ValueError(f"field of view must be a positive number of mm, got {field_mm!r}")
    return Grid.centered((0.0, 0.0, 0.0), n, fov / n)


def default_biplanar(isocenter: Sequence[float] = (0.0, 0.0, 0.0), pixels: int = DEFAULT_PIXELS,
                     sad: float = DEFAULT_SAD, sid: float = DEFAULT_SID,
                     detector_mm: float = DEFAULT_DETECTOR_MM) -> dict[str, ProjectionGeometry]:
    """The project's fixed default geometry (seed 001 used one fixed Plastimatch geometry
    and did not publish it): Plastimatch's default SAD 1000 mm and SID 1500 mm, a square
    400 mm detector of 128 x 128 pixels (2.08 mm per pixel at the isocentre: a 256 mm head
    field of view fits with margin), AP and lateral views about ``isocenter``."""
    common = dict(sad=sad, sid=sid, pixels=(pixels, pixels),
                  detector_size=(detector_mm, detector_mm), isocenter=tuple(isocenter))
    return {"ap": ProjectionGeometry.preset("ap", **common),
            "lateral": ProjectionGeometry.preset("lateral", **common)}


def rotation_matrix(angles_deg: Sequence[float]) -> np.ndarray:
    """Rotation about LPS x, then y, then z (degrees), as a 3x3 matrix ``Rz @ Ry @ Rx``."""
    ax, ay, az = (math.radians(a) for a in angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rotation_angles(rotation: np.ndarray) -> tuple[float, float, float]:
    """Angles ``(x, y, z)`` in radians with ``rotation_matrix(degrees(angles)) == rotation``
    (the inverse of :func:`rotation_matrix`, ITK's Euler3D ZYX convention)."""
    r = np.asarray(rotation, dtype=float).reshape(3, 3)
    ay = math.asin(max(-1.0, min(1.0, -r[2, 0])))
    if abs(math.cos(ay)) > 1e-9:
        ax = math.atan2(r[2, 1], r[2, 2])
        az = math.atan2(r[1, 0], r[0, 0])
    else:  # gimbal lock: put everything in z
        ax = 0.0
        az = math.atan2(-r[0, 1], r[1, 1])
    return (ax, ay, az)


RIGID_CONVENTION = ("x -> R (x - center) + center + translation, R = Rz Ry Rx (ITK "
                    "Euler3DTransform, ComputeZYX on); maps points of the fixed frame (the "
                    "canonical or template frame) to points of the moving frame (the CT); its "
                    "inverse maps CT points to that frame")


@dataclasses.dataclass
class RigidTransform:
    """A rigid (6-DOF) transform of LPS points, numpy only.

    ``x -> R (x - center) + center + translation`` with ``R = Rz @ Ry @ Rx``, exactly
    :func:`rotation_matrix` of the angles in degrees and ITK's ``Euler3DTransform`` with
    ``ComputeZYX`` on. In this project a transform follows ITK's resampling convention: it
    maps points of the frame a volume is resampled *into* (the canonical frame, a template)
    to points of the volume it is resampled *from* (the CT).

    Args:
        parameters: ``(angle_x, angle_y, angle_z, tx, ty, tz)``, radians and mm.
        center: LPS centre of rotation.
        info: how it was obtained (free-form, JSON-friendly).
    """

    parameters: tuple[float, float, float, float, float, float] = (0.0,) * 6
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        p = np.asarray(self.parameters, dtype=float).reshape(-1)
        if p.size != 6 or not np.all(np.isfinite(p)):
            raise ValueError(f"a rigid transform needs 6 finite parameters, got {self.parameters}")
        self.parameters = tuple(float(x) for x in p)  # type: ignore[assignment]
        self.center = _as3(self.center, "center")

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def translation_by(cls, offset: Sequence[float], **info: Any) -> "RigidTransform":
        """The pure translation ``x -> x + offset``."""
        return cls((0.0, 0.0, 0.0, *_as3(offset, "offset")), (0.0, 0.0, 0.0), dict(info))

    @classmethod
    def from_matrix(cls, matrix: np.ndarray, center: Sequence[float] = (0.0, 0.0, 0.0),
                    **info: Any) -> "RigidTransform":
        """From a 4x4 homogeneous rigid matrix, expressed about ``center``."""
        m = np.asarray(matrix, dtype=float).reshape(4, 4)
        r = m[:3, :3]
        if not np.allclose(r.T @ r, np.eye(3), atol=1e-5) or np.linalg.det(r) < 0:
            raise ValueError("not a rigid (rotation + translation) matrix")
        c = np.asarray(_as3(center, "center"))
        t = m[:3, 3] - c + r @ c
        return cls((*rotation_angles(r), *t.tolist()), tuple(c), dict(info))

    # -- the map ---------------------------------------------------------------------------
    @property
    def rotation(self) -> np.ndarray:
        """3x3 rotation matrix R."""
        return rotation_matrix([math.degrees(a) for a in self.parameters[:3]])

    @property
    def angles_deg(self) -> tuple[float, float, float]:
        return tuple(math.degrees(a) for a in self.parameters[:3])  # type: ignore[return-value]

    @property
    def translation(self) -> np.ndarray:
        return np.asarray(self.parameters[3:], float)

    @property
    def rotation_angle_deg(self) -> float:
        """The total rotation angle (degrees) of R."""
        c = (np.trace(self.rotation) - 1.0) / 2.0
        return math.degrees(math.acos(min(1.0, max(-1.0, c))))

    def matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix of the map."""
        r = self.rotation
        c = np.asarray(self.center)
        m = np.eye(4)
        m[:3, :3] = r
        m[:3, 3] = c + self.translation - r @ c
        return m

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        """Map ``(N, 3)`` LPS points (fixed frame -> moving frame)."""
        m = self.matrix()
        return np.asarray(points, float) @ m[:3, :3].T + m[:3, 3]

    def inverse_transform_points(self, points: np.ndarray) -> np.ndarray:
        """The inverse map of ``(N, 3)`` LPS points (moving frame -> fixed frame)."""
        m = np.linalg.inv(self.matrix())
        return np.asarray(points, float) @ m[:3, :3].T + m[:3, 3]

    def after_translation(self, offset: Sequence[float], **info: Any) -> "RigidTransform":
        """``x -> self(x + offset)``: this transform preceded by a translation (one Euler
        transform about ``center - offset``; the type and fields other than ``info`` kept)."""
        off = np.asarray(_as3(offset, "offset"))
        p = list(self.parameters)
        p[3:] = (self.translation + off).tolist()
        return dataclasses.replace(self, parameters=tuple(p),
                                   center=tuple(np.asarray(self.center) - off),
                                   info={**self.info, **info})

    def moved_geometry(self, geometry: "ProjectionGeometry") -> "ProjectionGeometry":
        """A projection geometry of the fixed frame expressed in the moving frame (isocentre
        mapped, normal and vup rotated): rays of the result through the moving frame are the
        images of the original rays."""
        r = self.rotation
        return dataclasses.replace(
            geometry, isocenter=tuple(self.transform_points(np.asarray(geometry.isocenter)[None])[0]),
            normal=tuple(r @ np.asarray(geometry.normal)), vup=tuple(r @ np.asarray(geometry.vup)))

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description; :meth:`from_dict` rebuilds the exact transform."""
        return {"type": "Euler3DTransform", "compute_zyx": True, "convention": RIGID_CONVENTION,
                "parameters": list(self.parameters), "fixed_parameters": list(self.center),
                "center": list(self.center), "angles_deg": list(self.angles_deg),
                "translation_mm": self.translation.tolist(), "matrix": self.matrix().tolist(),
                "info": self.info}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RigidTransform":
        if d.get("type", "Euler3DTransform") != "Euler3DTransform" or not d.get("compute_zyx", True):
            raise ValueError("only Euler3DTransform with ComputeZYX on is supported")
        center = d.get("fixed_parameters", d.get("center"))
        return cls(tuple(d["parameters"]), tuple(center[:3]), dict(d.get("info", {})))


@dataclasses.dataclass
class Radiograph:
    """A 2D projection image.

    Args:
        array: pixel values indexed ``[row, col]``; row 0 is the top of the image.
        pixel_spacing: ``(row, col)`` pixel size in mm at the detector (``None`` if unknown).
        geometry: the projection that made it, when known (DRRs always carry it).
        metadata: free-form key/value pairs (view, modality, source file, units, ...).
    """

    array: np.ndarray
    pixel_spacing: tuple[float, float] | None = None
    geometry: ProjectionGeometry | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 2:
            raise ValueError(f"a Radiograph needs a 2D array, got shape {self.array.shape}")
        if self.pixel_spacing is None and self.geometry is not None:
            self.pixel_spacing = self.geometry.pixel_spacing
        if self.pixel_spacing is not None:
            ps = tuple(float(x) for x in self.pixel_spacing)
            if len(ps) != 2 or min(ps) <= 0 or not all(math.isfinite(x) for x in ps):
                raise ValueError(f"pixel spacing must be two positive numbers, got {ps}")
            self.pixel_spacing = (ps[0], ps[1])
        if self.geometry is not None and tuple(self.array.shape) != self.geometry.pixels:
            raise ValueError(f"image shape {self.array.shape} differs from the geometry's "
                             f"detector {self.geometry.pixels}")


def field_of_view_mask(grid: Grid, canonical_to_ct: RigidTransform, model_grid: Grid) -> np.ndarray:
    """Where a model's output reaches on ``grid``: a bool ``[k, j, i]`` array, True for the
    voxels whose centres, mapped through the inverse of ``canonical_to_ct`` (CT -> model
    frame), fall inside ``model_grid``'s extent (its outer voxel edges: continuous index in
    ``[-0.5, n - 0.5]`` on every axis, where a linear resampling of the model's output has a
    value). The map from ``grid``'s index to ``model_grid``'s is one affine matrix
    (:meth:`~XRayToCTLib.geometry.Grid.index_to_lps`, the inverse transform,
    :meth:`~XRayToCTLib.geometry.Grid.lps_to_index`), applied one slice at a time."""
    m = model_grid.lps_to_index() @ np.linalg.inv(canonical_to_ct.matrix()) @ grid.index_to_lps()
    lo, hi = -0.5 - 1e-6, np.asarray(model_grid.size, dtype=float) - 0.5 + 1e-6
    ni, nj, nk = grid.size
    along_i = np.arange(ni, dtype=float)[:, None] * m[:3, 0]  # (ni, 3)
    along_j = np.arange(nj, dtype=float)[:, None] * m[:3, 1]  # (nj, 3)
    out = np.empty(grid.shape, dtype=bool)
    for k in range(nk):
        idx = (along_j + (k * m[:3, 2] + m[:3, 3]))[:, None, :] + along_i[None, :, :]
        out[k] = np.all((idx >= lo) & (idx <= hi), axis=-1)
    return out

"""What every model shares: its spec (inputs, output grid, geometry, intensity), the checks
of its constructor arguments and the registry's config -> arguments mapping, and the torch
port of :class:`~XRayToCTLib.geometry.ProjectionGeometry`'s projection used to put 2D image
features into 3D. (The input intensity convention is :func:`XRayToCTLib.drr.normalize_views`,
re-exported by :mod:`XRayToCTLib.models`.)

Conventions (the DRR renderer defines them; see :mod:`XRayToCTLib.geometry`):

* a model's output is a volume on its **canonical grid**: ``S^3`` voxels of ``output_spacing``
  mm, centred on the LPS origin, identity direction, array order ``[z, y, x]`` (``k, j, i``);
  z grows superiorly, so image row 0 (superior) meets the *last* z index;
* each input view is an image ``[P, P]`` made with the view's :class:`ProjectionGeometry`
  (isocentre at the grid's centre, the origin): row 0 = top (along ``vup``), columns along
  ``vup x normal``. AP: columns run to the patient's left (+x, array axis 2 increasing);
  lateral (source on the patient's right): columns run anteriorly (-y, array axis 1
  decreasing).
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import FIELD_OF_VIEW_MM
from ..geometry import Grid, ProjectionGeometry, canonical_grid, default_biplanar
from .intensity import get_mapping

SPEC_KEYS = ("views", "image_size", "output_size", "output_spacing", "geometry", "intensity")
"""Config keys that describe a model's inputs and output rather than its layers."""


@dataclasses.dataclass
class ModelSpec:
    """A model's contract with the rest of the library (JSON-friendly via ``to_dict``).

    Args:
        name: registry name (``"x2ct_gan"``, ``"cnn_inr"``, ...).
        views: names of the input views, in the order of the input tensor's view axis.
        image_size: ``P``, input images are ``P x P`` pixels.
        output_size: ``S``, the output grid is ``S^3`` voxels.
        output_spacing: voxel size of the output grid in mm (isotropic); the field of view is
            ``S * output_spacing`` (default 256 mm).
        geometry: view name -> :meth:`ProjectionGeometry.to_dict`, relative to the canonical
            grid (isocentre at the LPS origin).
        intensity: name of the output intensity mapping (:mod:`.intensity`).
        config: the full config the model was built from (``build_model(name, config)``
            rebuilds it).
    """

    name: str
    views: tuple[str, ...]
    image_size: int
    output_size: int
    output_spacing: float
    geometry: dict[str, dict[str, Any]]
    intensity: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.views, str):
            raise ValueError(f"views must be a list of view names, got the string {self.views!r}")
        self.views = tuple(str(v) for v in self.views)
        if not self.views:
            raise ValueError("a model needs at least one view")
        if len(set(self.views)) != len(self.views):
            raise ValueError(f"view names must be distinct, got {list(self.views)}")
        self.image_size = int(self.image_size)
        self.output_size = int(self.output_size)
        self.output_spacing = float(self.output_spacing)
        if self.image_size < 4 or self.output_size < 4:
            raise ValueError(f"image_size and output_size must be >= 4, got "
                             f"{self.image_size}, {self.output_size}")
        if not (self.output_spacing > 0 and math.isfinite(self.output_spacing)):
            raise ValueError(f"output_spacing must be a positive number, got {self.output_spacing}")
        missing = [v for v in self.views if v not in self.geometry]
        if missing:
            raise ValueError(f"no geometry for view(s) {missing}")

    def projection(self, view: str) -> ProjectionGeometry:
        """The :class:`ProjectionGeometry` of one view."""
        return ProjectionGeometry.from_dict(self.geometry[view])

    def projections(self) -> list[ProjectionGeometry]:
        return [self.projection(v) for v in self.views]

    def grid(self, size: int | None = None) -> Grid:
        """The canonical output grid (values are zeros): ``size^3`` voxels (default ``S``)
        covering the same field of view, centred on the origin, identity direction."""
        return canonical_grid(size or self.output_size, self.field_mm)

    @property
    def field_mm(self) -> float:
        """Side of the cubic field of view in mm (``output_size * output_spacing``)."""
        return self.output_size * self.output_spacing

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["views"] = list(self.views)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def default_geometry(views: Sequence[str], pixels: int) -> dict[str, dict[str, Any]]:
    """The project's default DRR geometry (:func:`geometry.default_biplanar`: SAD 1000 mm,
    SID 1500 mm, 400 mm detector) with ``pixels`` per side, isocentre at the origin, for any
    preset view name (``ap``, ``lateral``, ``pa``, ``lateral_left``)."""
    base = default_biplanar(pixels=pixels)["ap"]
    out = {}
    for v in views:
        g = dataclasses.replace(ProjectionGeometry.preset(v), sad=base.sad, sid=base.sid,
                                pixels=base.pixels, detector_size=base.detector_size)
        out[v] = g.to_dict()
    return out


# -------------------------------------------------------------------------------------------
# Constructor arguments: checks, spec, config dict -> arguments
# -------------------------------------------------------------------------------------------

def check_int(owner: str, name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an ``int >= minimum``; a ValueError naming ``owner`` and ``name`` for
    anything else (bools, fractions, text)."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if isinstance(value, float) and value.is_integer():
        ok = True
    if not ok or int(value) < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_ints(owner: str, name: str, value: Any, minimum: int = 0, min_length: int = 0
               ) -> list[int]:
    """``value`` as a list of ``int >= minimum`` with at least ``min_length`` entries."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{owner}: {name} must be a list of integers, got {value!r}")
    out = [check_int(owner, f"{name}[{i}]", v, minimum) for i, v in enumerate(value)]
    if len(out) < min_length:
        raise ValueError(f"{owner}: {name} needs at least {min_length} entries, got {out}")
    return out


def check_float(owner: str, name: str, value: Any, low: float, high: float,
                high_open: bool = False) -> float:
    """``value`` as a float in ``[low, high]`` (``[low, high)`` with ``high_open``)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or not (low <= x <= high) or (high_open and x >= high):
        raise ValueError(f"{owner}: {name} must be a number in [{low:g}, {high:g}"
                         f"{')' if high_open else ']'}, got {value!r}")
    return x


def check_choice(owner: str, name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def make_spec(name: str, *, views: Sequence[str], image_size: Any, output_size: Any,
              output_spacing: Any, geometry: Mapping[str, Any] | None, intensity: str,
              layers: Mapping[str, Any]) -> ModelSpec:
    """Check a model's input/output arguments and build its :class:`ModelSpec`.

    ``output_spacing`` ``None`` covers the canonical field of view
    (:data:`~XRayToCTLib.constants.FIELD_OF_VIEW_MM` / ``output_size``); ``geometry`` maps
    view names to :class:`ProjectionGeometry` objects or their ``to_dict()`` (views it does
    not name get :func:`default_geometry`; every used view's detector must be
    ``image_size`` pixels square). ``layers`` are the model's own (already checked)
    arguments; the spec's ``config`` is ``layers`` plus the spec arguments, so
    ``build_model(name, spec.config)`` rebuilds the same model."""
    if isinstance(views, str) or not isinstance(views, Sequence):
        raise ValueError(f"{name}: views must be a list of view names, got {views!r}")
    views = [str(v) for v in views]
    image_size = check_int(name, "image_size", image_size, 4)
    output_size = check_int(name, "output_size", output_size, 4)
    if output_spacing is None:
        output_spacing = FIELD_OF_VIEW_MM / output_size
    output_spacing = check_float(name, "output_spacing", output_spacing, 0.0, math.inf)
    if output_spacing == 0.0 or not math.isfinite(output_spacing):
        raise ValueError(f"{name}: output_spacing must be a positive number of mm, "
                         f"got {output_spacing!r}")
    get_mapping(intensity)  # validates the name
    if geometry is not None and not isinstance(geometry, Mapping):
        raise ValueError(f"{name}: geometry must map view names to projection geometries, "
                         f"got {type(geometry).__name__}")
    geom = {str(v): (g.to_dict() if isinstance(g, ProjectionGeometry) else g)
            for v, g in (geometry or {}).items()}
    geom.update(default_geometry([v for v in views if v not in geom], image_size))
    for v in views:
        g = ProjectionGeometry.from_dict(geom[v])
        if g.pixels != (image_size, image_size):
            raise ValueError(f"{name}: the {v} geometry has {g.pixels} pixels, image_size is "
                             f"{image_size}")
        geom[v] = g.to_dict()
    config = {**layers, "views": views, "image_size": image_size, "output_size": output_size,
              "output_spacing": output_spacing, "intensity": intensity, "geometry": geom}
    return ModelSpec(name, tuple(views), image_size, output_size, output_spacing, geom,
                     intensity, config)


def config_arguments(cls: type, config: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """The keyword arguments of ``cls`` named by a config dict (a model's ``spec.config``,
    a training run's ``model_config``); an unknown key is one ValueError line naming the
    valid ones."""
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    config = dict(config or {})
    valid = constructor_arguments(cls)
    unknown = sorted(set(config) - set(valid))
    if unknown:
        raise ValueError(f"{name}: unknown config key(s) {unknown}; valid: {sorted(valid)}")
    return config


def constructor_arguments(cls: type) -> dict[str, Any]:
    """Keyword arguments of ``cls``'s constructor and their defaults."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.name != "self"
            and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def layer_defaults(cls: type) -> dict[str, Any]:
    """The defaults of ``cls``'s layer arguments (its constructor's, minus the spec keys)."""
    return {k: v for k, v in constructor_arguments(cls).items() if k not in SPEC_KEYS}


# -------------------------------------------------------------------------------------------
# Projection (torch port of ProjectionGeometry.projection_matrix / project)
# -------------------------------------------------------------------------------------------

def projection_matrices(geometries: Sequence[ProjectionGeometry]) -> torch.Tensor:
    """``[V, 3, 4]`` float64 matrices of :meth:`ProjectionGeometry.projection_matrix`."""
    return torch.from_numpy(np.stack([g.projection_matrix() for g in geometries]))


def project_points_torch(points: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Continuous detector ``(row, col)`` of LPS points in every view.

    ``points``: ``[..., N, 3]`` LPS mm; ``matrices``: ``[V, 3, 4]`` (from
    :func:`projection_matrices`). Returns ``[..., V, N, 2]`` (row, col), exactly what
    :meth:`ProjectionGeometry.project` gives (the same pinhole formula), differentiable;
    computed in float32 at least."""
    dt = torch.promote_types(points.dtype, torch.float32)  # fp16 would overflow (~1e5)
    m = matrices.to(device=points.device, dtype=dt)
    uvw = torch.einsum("vij,...nj->...vni", m[..., :3], points.to(dt)) + m[:, None, :, 3]
    w = uvw[..., 2:3]
    col_row = uvw[..., :2] / w
    return col_row.flip(-1)


def detector_to_grid(row_col: torch.Tensor, pixels: tuple[int, int]) -> torch.Tensor:
    """``(row, col)`` pixel coordinates -> ``grid_sample`` coordinates ``(x, y)`` in
    ``[-1, 1]`` (``align_corners=False``: -1 and 1 are the outer pixel edges). The same
    normalised coordinates address a feature map of any resolution over the detector."""
    rows, cols = pixels
    x = (2.0 * row_col[..., 1] + 1.0) / cols - 1.0
    y = (2.0 * row_col[..., 0] + 1.0) / rows - 1.0
    return torch.stack([x, y], dim=-1)


def grid_points(grid: Grid, start: int = 0, stop: int | None = None,
                device: torch.device | str = "cpu", dtype=torch.float32) -> torch.Tensor:
    """LPS positions ``[n, 3]`` of the voxels ``start:stop`` of ``grid`` in flat ``[k, j, i]``
    (C) order (:meth:`Grid.voxel_points`, float64), as a ``dtype`` tensor on ``device``."""
    return torch.from_numpy(grid.voxel_points(start, stop)).to(device=device, dtype=dtype)


LIFT_MODES = ("perspective", "parallel")
"""How :class:`ViewLifter` puts 2D maps into 3D (a model's ``lift`` argument)."""


class ViewLifter(torch.nn.Module):
    """Puts 2D per-view maps into 3D: every voxel of a cube grid gets the value of each view's
    map where the voxel projects (bilinear; zero outside the detector).

    ``mode="perspective"`` (default) projects every voxel centre with the view's real
    :class:`ProjectionGeometry`, so a voxel meets exactly the pixel whose ray passes through
    it (a backprojection). ``mode="parallel"`` is the X2CT-GAN paper's "copy along depth":
    the image is stretched over the grid's face and repeated along the view's axis (AP along
    y, lateral along x), ignoring magnification and divergence; it needs the preset
    orientations (``vup`` = +z and a normal along x or y).

    ``forward(maps, size, view=None)``: ``maps`` ``[B, V, C, h, w]`` (any ``h, w``: they
    cover the whole detector) -> ``[B, V, C, size, size, size]`` in ``[z, y, x]`` order on
    the canonical grid of ``size^3`` voxels over ``field_mm``; with ``view=i``, ``maps``
    holds that one view (``V = 1``).
    """

    def __init__(self, geometries: Sequence[ProjectionGeometry], field_mm: float,
                 mode: str = "perspective"):
        super().__init__()
        if mode not in LIFT_MODES:
            raise ValueError(f"lift mode must be perspective or parallel, got {mode!r}")
        self.geometries = list(geometries)
        self.field_mm = float(field_mm)
        self.mode = mode
        if mode == "parallel":
            for g in self.geometries:
                n = np.round(np.asarray(g.normal), 6)
                if not (np.allclose(g.vup, (0, 0, 1)) and np.count_nonzero(n[:2]) == 1
                        and n[2] == 0):
                    raise ValueError(f"parallel lifting needs axis-aligned presets, not view "
                                     f"{g.view!r} (normal {g.normal}, vup {g.vup})")
        # a plain float64 attribute, not a buffer: module.half() must not round the geometry
        self.matrices = projection_matrices(self.geometries)
        self._grids: dict[tuple, torch.Tensor] = {}  # sampling grids by (size, view, device)

    def axis_coordinates(self, size: int, device: torch.device | str = "cpu"
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """LPS coordinates (mm, float64) of the voxel centres of the canonical grid of
        ``size^3`` voxels along x (index i), y (j) and z (k), from
        :func:`~XRayToCTLib.geometry.canonical_grid` (identity direction: the voxels
        ``(n, n, n)`` of the diagonal carry every axis's coordinate ``n``)."""
        grid = canonical_grid(size, self.field_mm)
        diagonal = np.repeat(np.arange(size, dtype=float)[:, None], 3, axis=1)
        xyz = torch.from_numpy(grid.physical_points(diagonal)).to(device)  # [size, 3]
        return xyz[:, 0], xyz[:, 1], xyz[:, 2]

    def sampling_grid(self, size: int, view: int | None = None,
                      device: torch.device | str = "cpu") -> torch.Tensor:
        """``[V, size*size, size, 2]`` ``grid_sample`` coordinates of the ``size^3`` voxels
        in every view (or ``[1, ...]`` for one ``view``)."""
        dev = torch.device(device)
        idx = range(len(self.geometries)) if view is None else [int(view)]
        x, y, z = self.axis_coordinates(size, dev)
        if self.mode == "perspective":
            # the canonical grid has identity direction, so P @ (x, y, z, 1) is a sum of
            # three 1D terms (separable: no size^3 x 3 point array)
            out = []
            for v in idx:
                m = self.matrices[v].to(dev)
                uvw = (m[:, 0] * x[None, None, :, None] + m[:, 1] * y[None, :, None, None]
                       + m[:, 2] * z[:, None, None, None] + m[:, 3]).float()  # [z, y, x, 3]
                col_row = uvw[..., :2] / uvw[..., 2:3]
                out.append(detector_to_grid(col_row.flip(-1), self.geometries[v].pixels))
                del uvw, col_row
            return torch.stack(out).reshape(len(idx), size * size, size, 2)
        # parallel: voxel centres over the half field, in (-1, 1) along each axis (the grid
        # is a cube: +-1 are its outer voxel edges, as grid_sample's align_corners=False)
        half = self.field_mm / 2.0
        z, y, x = torch.meshgrid(z / half, y / half, x / half, indexing="ij")
        out = []
        for geom in (self.geometries[v] for v in idx):
            col_dir = np.round(geom.col_dir, 6)
            # image columns along +-x (AP/PA) or +-y (lateral); rows top = +z
            horiz = x if col_dir[0] != 0 else y
            gx = horiz * float(np.sign(col_dir[0] + col_dir[1]))
            out.append(torch.stack([gx, -z], dim=-1))
        return torch.stack(out).reshape(len(idx), size * size, size, 2).float()

    def forward(self, maps: torch.Tensor, size: int, view: int | None = None) -> torch.Tensor:
        b, v, c, h, w = maps.shape
        if v != (len(self.geometries) if view is None else 1):
            raise ValueError(f"expected {len(self.geometries) if view is None else 1} "
                             f"view(s), got {v}")
        key = (int(size), view, str(maps.device))
        grid = self._grids.get(key)
        if grid is None:  # cached: 2 x 4 bytes per voxel and view (17 MB per view at 128^3)
            grid = self._grids[key] = self.sampling_grid(size, view, maps.device)
        grid = grid.to(maps.dtype)
        out = []
        for i in range(v):
            g = grid[i][None].expand(b, -1, -1, -1)
            s = F.grid_sample(maps[:, i], g, mode="bilinear", padding_mode="zeros",
                              align_corners=False)  # [B, C, size*size, size]
            out.append(s.reshape(b, c, size, size, size))
        return torch.stack(out, dim=1)


OUTPUT_ACTIVATIONS = ("sigmoid", "relu", "clamp", "none")
"""The models' output activations (:func:`activation_layer`)."""


def activation_layer(name: str) -> torch.nn.Module:
    """``"sigmoid"`` (default: outputs in (0, 1), the range of every intensity mapping),
    ``"relu"`` (the X2CT-GAN code's choice), ``"clamp"`` (hard [0, 1]) or ``"none"``."""
    if name == "sigmoid":
        return torch.nn.Sigmoid()
    if name == "relu":
        return torch.nn.ReLU()
    if name == "clamp":
        return torch.nn.Hardtanh(0.0, 1.0)
    if name == "none":
        return torch.nn.Identity()
    raise ValueError(f"output_activation must be sigmoid, relu, clamp or none, got {name!r}")


def check_views(views: torch.Tensor, spec: ModelSpec, nviews: int | None = None) -> None:
    """Validate a ``[B, V, P, P]`` input against the spec (clear message on mismatch)."""
    p = spec.image_size
    nv = len(spec.views) if nviews is None else nviews
    if not isinstance(views, torch.Tensor) or views.dim() != 4 or views.shape[1] != nv \
            or tuple(views.shape[2:]) != (p, p):
        shape = tuple(views.shape) if isinstance(views, torch.Tensor) else type(views).__name__
        raise ValueError(f"{spec.name} expects views [B, {nv}, {p}, {p}] "
                         f"({', '.join(spec.views)}), got {shape}")

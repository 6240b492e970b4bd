"""CNN-INR of seed 001: an image-conditioned implicit neural representation (pixelNeRF-style,
Yu et al. 2021), adapted to cone-beam radiographs.

* A 2D CNN encoder per view (or one shared by all views, ``shared_encoder``): a stem
  convolution and stride-2 MONAI ``ResidualUnit`` stages give feature maps at ``P``,
  ``P/2``, ``P/4``, ... (instance norm, ReLU).
* A 3D query point ``p`` (LPS mm) is projected into every view with the view's real
  perspective geometry (:func:`~.common.project_points_torch`, the same pinhole formula as
  :meth:`ProjectionGeometry.project`, which the DRR renderer's rays also follow), and every
  feature map is sampled there bilinearly (``grid_sample``; zero outside the detector).
* Per view: ``h_v = ReLU(f(p) + W_pe gamma(p) + e_v)`` then ``view_layers`` more layers,
  where ``f = sum_l up(W_l F_l)`` is the scales' feature maps ``F_l``, each through a 1x1
  convolution ``W_l`` (the MLP's first layer, applied in 2D: fewer operations than per
  point) and upsampled bilinearly to ``P x P`` (pixelNeRF's multi-scale features), sampled
  bilinearly where ``p`` projects; ``gamma`` is the sinusoidal positional encoding of ``p``
  (scaled to [-1, 1] over the field of view: ``p, sin(2^k pi p), cos(2^k pi p)``,
  ``k < pe_frequencies``) and ``e_v`` a learned embedding of the view.
* The views are averaged (so 1 to N views, any subset of the trained ones), and an MLP maps
  the average to the intensity.

``query(views, points)`` evaluates any points; ``render(views, grid)`` any output grid and
spacing, in chunks of points to bound memory; ``forward(views)`` renders the canonical grid
(in training mode the grid's points are computed once and kept).
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit

from ..geometry import Grid, ProjectionGeometry
from .common import (OUTPUT_ACTIVATIONS, ModelSpec, activation_layer, check_choice, check_int,
                     check_ints, check_views, detector_to_grid, grid_points, layer_defaults,
                     make_spec, project_points_torch, projection_matrices)

ACT = ("relu", {"inplace": True})


class _Encoder(nn.Module):
    """One view's 2D features: a 3x3 stem, stride-2 residual stages, every scale through a
    1x1 convolution to ``hidden`` channels and upsampled to the input's size and summed:
    ``[B, 1, P, P] -> [B, hidden, P, P]``."""

    def __init__(self, stem: int, channels: Sequence[int], hidden: int):
        super().__init__()
        self.stem = Convolution(2, 1, stem, kernel_size=3, act=ACT, norm="instance")
        chans = [stem, *channels]
        self.stages = nn.ModuleList(
            ResidualUnit(2, chans[i], chans[i + 1], strides=2, kernel_size=3, subunits=2,
                         act=ACT, norm="instance") for i in range(len(channels)))
        # the per-view MLP's first layer, applied to every scale as a 1x1 convolution
        self.proj = nn.ModuleList(nn.Conv2d(c, hidden, 1, bias=False) for c in chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)
        out = self.proj[0](f)
        for stage, proj in zip(self.stages, self.proj[1:]):
            f = stage(f)
            out = out + F.interpolate(proj(f), size=x.shape[-2:], mode="bilinear",
                                      align_corners=False)
        return out


def _linear(layer: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    """``nn.Linear`` on channels-first ``[B, C, N]`` features."""
    w = layer.weight
    return torch.baddbmm(layer.bias[None, :, None], w[None].expand(h.shape[0], *w.shape), h)


class CNNINR(nn.Module):
    """CNN-INR (see the module doc).

    Args:
        views: input view names, in the order of the input's view axis (default AP and
            lateral); any subset of them can be given at inference (``view_names``).
        image_size: ``P``, the input images are ``P x P`` pixels.
        output_size: ``S``, :meth:`forward` renders ``S^3`` voxels (:meth:`render` any grid).
        output_spacing: output voxel size in mm; default: the canonical field of view
            (256 mm) over ``S``. The positional encoding is scaled to this field.
        geometry: view name -> :class:`ProjectionGeometry` (or its ``to_dict()``) with
            ``P x P`` pixels, isocentre at the origin; default: the project's default
            biplanar geometry.
        intensity: the output intensity mapping (:mod:`.intensity`).
        stem_channels: channels of the encoder's stem convolution.
        encoder_channels: channels of the stride-2 residual stages (may be empty).
        shared_encoder: one encoder for all views instead of one per view.
        hidden: width of the per-point MLP.
        view_layers: MLP layers per view after the first (before the views are averaged).
        fused_layers: MLP layers after the views are averaged.
        pe_frequencies: frequencies of the positional encoding (0: the point alone).
        chunk: points per pass in :meth:`render`.
        output_activation: ``"sigmoid"``, ``"relu"``, ``"clamp"`` or ``"none"``.

    ``forward(views [B, V, P, P]) -> [B, 1, S, S, S]`` in the intensity mapping's space,
    array order ``[z, y, x]`` on the canonical grid (``spec.grid()``); the views normalised
    with :func:`~XRayToCTLib.models.normalize_views`. ``query(views, points [B, N, 3]) ->
    [B, N]``; ``render(views, grid) -> [B, 1, *grid.shape]``. ``spec`` (:class:`ModelSpec`)
    holds every argument (``spec.config``).
    """

    name = "cnn_inr"

    def __init__(self, *, views: Sequence[str] = ("ap", "lateral"), image_size: int = 128,
                 output_size: int = 128, output_spacing: float | None = None,
                 geometry: Mapping[str, ProjectionGeometry | Mapping[str, Any]] | None = None,
                 intensity: str = "hu_compand", stem_channels: int = 16,
                 encoder_channels: Sequence[int] = (32, 64, 96), shared_encoder: bool = False,
                 hidden: int = 64, view_layers: int = 1, fused_layers: int = 2,
                 pe_frequencies: int = 6, chunk: int = 131072,
                 output_activation: str = "sigmoid") -> None:
        super().__init__()
        name = self.name
        stem_channels = check_int(name, "stem_channels", stem_channels)
        encoder_channels = check_ints(name, "encoder_channels", encoder_channels, 1)
        if not isinstance(shared_encoder, bool):
            raise ValueError(f"{name}: shared_encoder must be true or false, "
                             f"got {shared_encoder!r}")
        h = check_int(name, "hidden", hidden)
        view_layers = check_int(name, "view_layers", view_layers, 0)
        fused_layers = check_int(name, "fused_layers", fused_layers, 0)
        nfreq = check_int(name, "pe_frequencies", pe_frequencies, 0)
        chunk = check_int(name, "chunk", chunk)
        check_choice(name, "output_activation", output_activation, OUTPUT_ACTIVATIONS)
        self.spec: ModelSpec = make_spec(
            name, views=views, image_size=image_size, output_size=output_size,
            output_spacing=output_spacing, geometry=geometry, intensity=intensity, layers={
                "stem_channels": stem_channels, "encoder_channels": encoder_channels,
                "shared_encoder": shared_encoder, "hidden": h, "view_layers": view_layers,
                "fused_layers": fused_layers, "pe_frequencies": nfreq, "chunk": chunk,
                "output_activation": output_activation})
        views = self.spec.views
        enc = lambda: _Encoder(stem_channels, encoder_channels, h)  # noqa: E731
        self.encoders = nn.ModuleDict(
            {"shared": enc()} if shared_encoder else {v: enc() for v in views})
        self.nfreq = nfreq
        self.pe = nn.Linear(3 + 6 * nfreq, h)
        self.view_embedding = nn.Parameter(torch.zeros(len(views), h))
        self.view_mlp = nn.ModuleList(nn.Linear(h, h) for _ in range(view_layers))
        self.fused_mlp = nn.ModuleList(nn.Linear(h, h) for _ in range(fused_layers))
        self.out = nn.Linear(h, 1)
        self.activation = activation_layer(output_activation)
        self.chunk = chunk
        self.half_field = self.spec.field_mm / 2.0
        # plain float64 attribute, not a buffer: module.half() must not round the geometry
        self.matrices = projection_matrices(self.spec.projections())
        self._points_cache: tuple[Any, torch.Tensor] | None = None  # see _grid_points

    # -- pieces ---------------------------------------------------------------------------
    def _view_index(self, view_names: Sequence[str] | None) -> list[int]:
        names = list(self.spec.views if view_names is None else view_names)
        bad = [v for v in names if v not in self.spec.views]
        if bad or not names or len(set(names)) != len(names):
            raise ValueError(f"{self.name}: views {names} must be distinct names among the "
                             f"trained ones {list(self.spec.views)}")
        return [self.spec.views.index(v) for v in names]

    def encode(self, views: torch.Tensor, view_names: Sequence[str] | None = None
               ) -> list[torch.Tensor]:
        """Per view, the ``[B, hidden, P, P]`` feature map (through the MLP's first layer)."""
        idx = self._view_index(view_names)
        check_views(views, self.spec, len(idx))
        out = []
        for j, i in enumerate(idx):
            enc = self.encoders["shared"] if "shared" in self.encoders \
                else self.encoders[self.spec.views[i]]
            out.append(enc(views[:, j:j + 1]))
        return out

    def positional_encoding(self, points: torch.Tensor) -> torch.Tensor:
        """``[B, N, 3]`` LPS mm -> ``[B, 3 + 6 * pe_frequencies, N]`` (channels first)."""
        p = points.transpose(1, 2) / self.half_field  # [B, 3, N]
        if self.nfreq == 0:
            return p
        freqs = (2.0 ** torch.arange(self.nfreq, device=p.device, dtype=p.dtype)) * math.pi
        a = (p[:, None] * freqs[None, :, None, None]).flatten(1, 2)  # [B, 3F, N]
        return torch.cat([p, a.sin(), a.cos()], dim=1)

    def project(self, points: torch.Tensor, view_names: Sequence[str] | None = None
                ) -> torch.Tensor:
        """Detector ``(row, col)`` of ``[B, N, 3]`` LPS points in each view: ``[B, V, N, 2]``
        (what :meth:`ProjectionGeometry.project` gives)."""
        idx = self._view_index(view_names)
        return project_points_torch(points, self.matrices[idx])

    def decode(self, feats: list[torch.Tensor], points: torch.Tensor,
               view_names: Sequence[str] | None = None) -> torch.Tensor:
        """Intensities ``[B, N]`` of ``[B, N, 3]`` LPS points from :meth:`encode`'s output.
        (Computed channels first, ``[B, hidden, N]``: no per-point transposes.)"""
        idx = self._view_index(view_names)
        pixels = self.spec.image_size
        rc = project_points_torch(points, self.matrices[idx])  # [B, V, N, 2]
        base = _linear(self.pe, self.positional_encoding(points.to(self.pe.weight.dtype)))
        acc = None
        for j, i in enumerate(idx):
            g = detector_to_grid(rc[:, j], (pixels, pixels))[:, None].to(base.dtype)  # [B,1,N,2]
            h = F.grid_sample(feats[j], g, mode="bilinear", padding_mode="zeros",
                              align_corners=False)[:, :, 0]  # [B, H, N], a view
            # out of place first: in-place ops on the view would copy it whole in backward
            h = torch.add(h, base).add_(self.view_embedding[i][:, None]).relu_()
            for layer in self.view_mlp:
                h = _linear(layer, h).relu_()
            acc = h if acc is None else acc + h
        h = acc if len(idx) == 1 else acc.div_(len(idx))
        for layer in self.fused_mlp:
            h = _linear(layer, h).relu_()
        return self.activation(_linear(self.out, h))[:, 0]

    # -- public API -----------------------------------------------------------------------
    def query(self, views: torch.Tensor, points_lps: torch.Tensor,
              view_names: Sequence[str] | None = None) -> torch.Tensor:
        """Intensities ``[B, N]`` at ``[B, N, 3]`` LPS points (mm), in one pass (training)."""
        if points_lps.dim() != 3 or points_lps.shape[-1] != 3 \
                or points_lps.shape[0] != views.shape[0]:
            raise ValueError(f"points must be [B, N, 3] with B = {views.shape[0]}, "
                             f"got {tuple(points_lps.shape)}")
        return self.decode(self.encode(views, view_names), points_lps, view_names)

    def render(self, views: torch.Tensor, grid: Grid, chunk: int | None = None,
               view_names: Sequence[str] | None = None) -> torch.Tensor:
        """The sCT on any grid (size, spacing, origin, direction; LPS): ``[B, 1, *grid.shape]``
        (``[k, j, i]``), evaluated ``chunk`` points at a time."""
        chunk = int(chunk or self.chunk)
        feats = self.encode(views, view_names)
        b = views.shape[0]
        n = math.prod(grid.shape)
        dt = self.pe.weight.dtype
        out = torch.empty(b, n, dtype=dt, device=views.device)
        whole = self._grid_points(grid, views.device) if self.training else None
        for s in range(0, n, chunk):
            pts = (whole[s:s + chunk] if whole is not None
                   else grid_points(grid, s, min(n, s + chunk), views.device, torch.float32))
            out[:, s:s + pts.shape[0]] = self.decode(
                feats, pts[None].expand(b, -1, -1), view_names).to(dt)
        return out.reshape(b, 1, *grid.shape)

    def _grid_points(self, grid: Grid, device: torch.device) -> torch.Tensor:
        """All of ``grid``'s voxel centres ``[n, 3]`` (float32), kept for the next call: in
        training the same grid is rendered every step (at inference, :meth:`render` computes
        each chunk's points and keeps none)."""
        key = (json.dumps(grid.geometry_dict(), sort_keys=True, default=str), str(device))
        if self._points_cache is None or self._points_cache[0] != key:
            n = math.prod(grid.shape)
            self._points_cache = (key, grid_points(grid, 0, n, device, torch.float32))
        return self._points_cache[1]

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.render(views, self.spec.grid())


DEFAULTS: dict[str, Any] = layer_defaults(CNNINR)
"""The layer arguments and their defaults."""

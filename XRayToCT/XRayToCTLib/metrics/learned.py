"""Metrics with a learned feature network: LPIPS (AlexNet, v0.1) and an AlexNet-feature FID.

Only with local weights: nothing is ever downloaded; without weights these raise
:class:`MetricUnavailable`.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import scipy.linalg
import torch
from safetensors.torch import load_file

from ..errors import InputError
from .batch import ArrayLike, as_batch, check_range, pair

__all__ = ["MetricUnavailable", "LPIPS_ENV", "FID_ENV", "LPIPSAlex", "lpips", "frechet_distance",
           "fid"]

LPIPS_ENV = "XRAYTOCT_LPIPS_WEIGHTS"
"""Environment variable naming the local LPIPS weights file."""
FID_ENV = "XRAYTOCT_FID_WEIGHTS"
"""Environment variable naming the local weights file of the FID's feature network."""


class MetricUnavailable(RuntimeError):
    """A metric that cannot be computed here (no local feature-network weights)."""


def _weights_path(weights: str | os.PathLike | None, env: str, what: str) -> Path:
    p = weights if weights is not None else os.environ.get(env)
    if not p:
        raise MetricUnavailable(f"{what} unavailable: no local weights (pass a weights file or "
                                f"set {env}; nothing is downloaded)")
    path = Path(p)
    if not path.is_file():
        raise MetricUnavailable(f"{what} unavailable: no local weights: {path} is not a file")
    return path


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a plain tensor file (``weights_only=True``)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(path, f"not a weights file: {err}") from err
    if not isinstance(state, dict):
        raise InputError(path, "not a state dict of tensors")
    return state


class LPIPSAlex(torch.nn.Module):
    """LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018): scaling layer, the 5 ReLU
    outputs of AlexNet's features, unit-normalised across channels, squared differences
    weighted by the learned 1x1 "lin" layers, spatially averaged and summed."""

    CHANNELS = (64, 192, 384, 256, 256)
    TAPS = (1, 4, 7, 9, 11)

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Accepts torchvision AlexNet names (``features.N.*``) or the ``lpips`` package's
        (``net.sliceK.N.*``), plus ``linK.model.1.weight`` / ``lins.K.weight``."""
        mapped = {}
        for key, val in state.items():
            m = re.fullmatch(r"(?:net\.slice\d\.|features\.)(\d+)\.(weight|bias)", key)
            if m:
                mapped[f"features.{m[1]}.{m[2]}"] = val
                continue
            m = re.fullmatch(r"lin(\d)\.model\.1\.weight|lins\.(\d)\.weight", key)
            if m:
                mapped[f"lins.{m[1] or m[2]}.weight"] = val
        missing = [k for k in self.state_dict() if k not in mapped and k not in ("shift", "scale")]
        if missing:
            raise MetricUnavailable(f"LPIPS unavailable: the weights file lacks {missing[:3]}")
        self.load_state_dict(mapped, strict=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        hx, hy = (x - self.shift) / self.scale, (y - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            hx, hy = layer(hx), layer(hy)
            if i in self.TAPS:
                k = self.TAPS.index(i)
                nx = hx / (hx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                ny = hy / (hy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + self.lins[k]((nx - ny) ** 2).mean(dim=(1, 2, 3))
        return total


_LPIPS_CACHE: dict[tuple[str, str], LPIPSAlex] = {}


def lpips(x: ArrayLike, y: ArrayLike, *, weights: str | os.PathLike | None = None,
          data_range: float = 1.0, chunk: int = 64) -> torch.Tensor:
    """LPIPS (AlexNet, v0.1) of grey images in [0, data_range], ``[B]`` (lower is closer).

    2D inputs ``[B, 1, H, W]``: one value per image. 3D inputs ``[B, 1, D, H, W]``: the mean
    over every slice along each of the three axes. The grey value is repeated on the three
    colour channels and mapped to [-1, 1]. Needs a local weights file (``weights`` or the
    environment variable ``XRAYTOCT_LPIPS_WEIGHTS``; ``.safetensors`` or a tensor file read
    with ``weights_only=True``) holding AlexNet's ``features`` and LPIPS's ``lin`` layers;
    without one it raises :class:`MetricUnavailable` (nothing is downloaded)."""
    path = _weights_path(weights, LPIPS_ENV, "LPIPS")
    a, b = pair(x, y, torch.float32)
    key = (str(path.resolve()), str(a.device))
    if key not in _LPIPS_CACHE:
        net = LPIPSAlex()
        net.load(_load_state(path))
        _LPIPS_CACHE[key] = net.eval().to(a.device)
    net = _LPIPS_CACHE[key]
    r = check_range(data_range)

    def run(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:  # [N, 1, H, W]
        outs = []
        with torch.no_grad():
            for s in range(0, p.shape[0], chunk):
                pp = (p[s:s + chunk] / r * 2 - 1).expand(-1, 3, -1, -1)
                qq = (q[s:s + chunk] / r * 2 - 1).expand(-1, 3, -1, -1)
                outs.append(net(pp, qq))
        return torch.cat(outs)

    if a.dim() == 4:
        return run(a, b).double()
    per_axis = []
    for axis in (2, 3, 4):
        sa = a.movedim(axis, 1).flatten(0, 1)
        sb = b.movedim(axis, 1).flatten(0, 1)
        per_axis.append(run(sa, sb).view(a.shape[0], -1).mean(1))
    return torch.stack(per_axis).mean(0).double()


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, C]``:
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` (the formula of FID)."""
    fa = np.asarray(features_a, dtype=np.float64)
    fb = np.asarray(features_b, dtype=np.float64)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1] or min(len(fa), len(fb)) < 2:
        raise ValueError(f"need two feature sets [N >= 2, C] with equal C, got {fa.shape}, {fb.shape}")
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    sa, sb = np.atleast_2d(np.cov(fa, rowvar=False)), np.atleast_2d(np.cov(fb, rowvar=False))
    with warnings.catch_warnings():  # few samples: singular covariances are expected
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sa @ sb)
    if not np.all(np.isfinite(covmean)):
        eps = 1e-6 * np.eye(sa.shape[0])
        covmean = scipy.linalg.sqrtm((sa + eps) @ (sb + eps))
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.trace(covmean))


def fid(images_a: ArrayLike, images_b: ArrayLike, *, weights: str | os.PathLike | None = None,
        data_range: float = 1.0) -> float:
    """FID between two sets of grey 2D images ``[N, 1, H, W]`` in [0, data_range].

    The Fréchet distance (:func:`frechet_distance`) of feature-network activations. The
    feature network is the LPIPS AlexNet backbone (global-average-pooled last ReLU, 256
    features) loaded from local weights (``weights`` or ``XRAYTOCT_FID_WEIGHTS``); this is
    **not** the Inception-v3 FID of the literature, so its values are comparable only with
    each other. Without weights: :class:`MetricUnavailable` (nothing is downloaded)."""
    path = _weights_path(weights, FID_ENV, "FID")
    a = as_batch(images_a, "images_a", torch.float32)
    b = as_batch(images_b, "images_b", torch.float32)
    if a.dim() != 4 or b.dim() != 4:
        raise ValueError("fid takes two batches of 2D images [N, 1, H, W]")
    net = LPIPSAlex()
    state = _load_state(path)
    net.features.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items()
                                  if k.startswith("features.")}, strict=True)
    r = check_range(data_range)
    with torch.no_grad():
        feats = [net.features(((t / r * 2 - 1).expand(-1, 3, -1, -1) - net.shift) / net.scale
                              ).mean(dim=(2, 3)).numpy() for t in (a, b)]
    return frechet_distance(*feats)

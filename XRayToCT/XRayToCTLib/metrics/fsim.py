"""FSIM (Zhang, Zhang, Mou, Zhang 2011), following the authors' ``FeatureSIM.m`` and
``phasecong2.m``: phase congruency and the feature similarity of grey 2D images."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .batch import ArrayLike, check_range, pair

__all__ = ["phase_congruency", "fsim"]


def _freq_grid(rows: int, cols: int, dtype, device):
    def rng(n: int) -> torch.Tensor:
        if n % 2:
            return torch.arange(-(n - 1) / 2, (n - 1) / 2 + 1, dtype=dtype, device=device) / max(n - 1, 1)
        return torch.arange(-n / 2, n / 2, dtype=dtype, device=device) / n
    y, x = torch.meshgrid(rng(rows), rng(cols), indexing="ij")
    radius = torch.fft.ifftshift(torch.sqrt(x * x + y * y))
    theta = torch.fft.ifftshift(torch.atan2(-y, x))
    return radius, theta


def phase_congruency(image: torch.Tensor, *, nscale: int = 4, norient: int = 4,
                     min_wavelength: float = 6.0, mult: float = 2.0, sigma_onf: float = 0.55,
                     d_theta_on_sigma: float = 1.2, k: float = 2.0,
                     epsilon: float = 1e-4) -> torch.Tensor:
    """Kovesi's phase congruency as FSIM's ``phasecong2.m`` computes it (log-Gabor filters,
    ``nscale`` scales x ``norient`` orientations, noise compensation), for ``[B, 1, H, W]``
    images; returns ``[B, 1, H, W]`` in [0, 1]."""
    im = image[:, 0]
    b, rows, cols = im.shape
    dt, dev = im.dtype, im.device
    radius, theta = _freq_grid(rows, cols, dt, dev)
    radius[0, 0] = 1.0
    sin_t, cos_t = torch.sin(theta), torch.cos(theta)
    lowpass = 1.0 / (1.0 + (radius / 0.45) ** (2 * 15))
    log_gabor = []
    for s in range(nscale):
        fo = 1.0 / (min_wavelength * mult ** s)
        g = torch.exp(-(torch.log(radius / fo)) ** 2 / (2 * math.log(sigma_onf) ** 2)) * lowpass
        g[0, 0] = 0.0
        log_gabor.append(g)
    theta_sigma = math.pi / norient / d_theta_on_sigma
    fft = torch.fft.fft2(im)
    energy_all = torch.zeros_like(im)
    an_all = torch.zeros_like(im)
    for o in range(norient):
        angle = o * math.pi / norient
        ds = sin_t * math.cos(angle) - cos_t * math.sin(angle)
        dc = cos_t * math.cos(angle) + sin_t * math.sin(angle)
        spread = torch.exp(-torch.atan2(ds, dc).abs() ** 2 / (2 * theta_sigma ** 2))
        sum_e = torch.zeros_like(im)
        sum_o = torch.zeros_like(im)
        sum_an = torch.zeros_like(im)
        eo, ifft_filters = [], []
        for s in range(nscale):
            filt = log_gabor[s] * spread
            ifft_filters.append(torch.fft.ifft2(filt).real * math.sqrt(rows * cols))
            resp = torch.fft.ifft2(fft * filt)
            eo.append(resp)
            sum_an = sum_an + resp.abs()
            sum_e = sum_e + resp.real
            sum_o = sum_o + resp.imag
            if s == 0:
                em_n = float((filt ** 2).sum())
        x_energy = torch.sqrt(sum_e ** 2 + sum_o ** 2) + epsilon
        mean_e, mean_o = sum_e / x_energy, sum_o / x_energy
        energy = torch.zeros_like(im)
        for resp in eo:
            e, od = resp.real, resp.imag
            energy = energy + e * mean_e + od * mean_o - (e * mean_o - od * mean_e).abs()
        median_e2n = torch.quantile((eo[0].abs() ** 2).reshape(b, -1), 0.5, dim=1)
        mean_e2n = -median_e2n / math.log(0.5)
        noise_power = mean_e2n / em_n  # [B]
        est_sum_an2 = sum(f ** 2 for f in ifft_filters).sum()
        est_sum_aiaj = sum(ifft_filters[i] * ifft_filters[j] for i in range(nscale - 1)
                           for j in range(i + 1, nscale)).sum()
        est_noise_energy2 = 2 * noise_power * est_sum_an2 + 4 * noise_power * est_sum_aiaj
        tau = torch.sqrt(est_noise_energy2 / 2)
        t = (tau * math.sqrt(math.pi / 2) + k * torch.sqrt((2 - math.pi / 2) * tau ** 2)) / 1.7
        energy_all = energy_all + torch.clamp(energy - t[:, None, None], min=0.0)
        an_all = an_all + sum_an
    return (energy_all / an_all)[:, None]


_SCHARR_X = torch.tensor([[3.0, 0.0, -3.0], [10.0, 0.0, -10.0], [3.0, 0.0, -3.0]]) / 16.0


def fsim(x: ArrayLike, y: ArrayLike, *, data_range: float = 1.0) -> torch.Tensor:
    """FSIM of grey 2D images ``[B, 1, H, W]`` (x the reference), ``[B]``, as the authors'
    ``FeatureSIM.m`` defines it: images scaled to 0..255 (``255 / data_range``), averaged and
    subsampled by ``F = max(1, round(min(H, W) / 256))``; phase congruency PC
    (:func:`phase_congruency`) and Scharr gradient magnitude G (zero padding);
    ``S = (2 PC1 PC2 + 0.85)/(PC1^2 + PC2^2 + 0.85) * (2 G1 G2 + 160)/(G1^2 + G2^2 + 160)``;
    FSIM = sum(S * PCm) / sum(PCm) with ``PCm = max(PC1, PC2)``. 1 for identical images."""
    a, b = pair(x, y)
    if a.dim() != 4:
        raise ValueError(f"fsim takes 2D images [B, 1, H, W], got {tuple(a.shape)}")
    scale = 255.0 / check_range(data_range)
    a, b = a * scale, b * scale
    f = max(1, round(min(a.shape[-2:]) / 256))
    if f > 1:
        lo, hi = f - 1 - f // 2, f // 2
        box = torch.ones(1, 1, f, f, dtype=a.dtype, device=a.device) / f ** 2
        a = F.conv2d(F.pad(a, (lo, hi, lo, hi)), box)[..., ::f, ::f]
        b = F.conv2d(F.pad(b, (lo, hi, lo, hi)), box)[..., ::f, ::f]
    pc1, pc2 = phase_congruency(a), phase_congruency(b)
    kx = _SCHARR_X.to(a.dtype).to(a.device)[None, None]
    ky = kx.transpose(-1, -2)

    def grad(im: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(F.conv2d(im, kx, padding=1) ** 2 + F.conv2d(im, ky, padding=1) ** 2)

    g1, g2 = grad(a), grad(b)
    s_pc = (2 * pc1 * pc2 + 0.85) / (pc1 ** 2 + pc2 ** 2 + 0.85)
    s_g = (2 * g1 * g2 + 160.0) / (g1 ** 2 + g2 ** 2 + 160.0)
    pcm = torch.maximum(pc1, pc2)
    return (s_pc * s_g * pcm).flatten(1).sum(1) / pcm.flatten(1).sum(1)

"""Conditional diffusion (seed 002, Diff2CT), designed for a CPU: a **residual** diffusion at
low resolution on top of a fast model's sCT, sampled in a few DDIM steps, several samples
giving a voxel-wise spread (the uncertainty).

* **Prior**: a frozen reconstruction model (by default the shipped CNN-INR
  ``cnn_inr_real128``) makes its sCT from the same views. It is *referenced*, not embedded:
  the package stores the prior's catalog name (or file) and its SHA-256 (``prior``,
  ``prior_sha256``), and the prior is loaded from the catalog when the model is built (a
  different file is refused: the residuals were learned on top of that one). Its weights are
  not in this model's ``state_dict``. ``prior=None``: no prior (the residual is on top of
  air: plain conditional diffusion at low resolution).
* **Condition** (Diff2CT's X2NoiseNet conditioning, simplified): on the low-resolution
  canonical grid (``diffusion_size^3`` voxels over the same field), the prior's sCT rendered
  there and, per view, the normalised view **back-projected along its real rays**
  (:class:`~.common.ViewLifter` in perspective mode: every voxel takes the pixel its ray
  meets, the X2CT-GAN lifting of :mod:`.x2ct_gan`).
* **Denoiser**: MONAI's ``DiffusionModelUNet`` (3D, no attention, small widths) on
  ``[noisy residual, prior, back-projections]``; the residual is
  ``(target - prior) * residual_scale`` in the model intensity (``hu_compand``), the target
  area-averaged onto the low-resolution grid. MONAI's ``DDPMScheduler`` trains it
  (``prediction_type`` ``v_prediction`` by default: the clean residual
  ``x0 = sqrt(a) x_t - sqrt(1 - a) v`` is well behaved at every noise level, so the
  projection-consistency term of the training can use it), MONAI's ``DDIMScheduler`` samples
  it in ``sample_steps`` steps (deterministic for ``eta = 0`` given the starting noise).
* **Output**: ``prior (full size) + trilinear upsampling of the residual / residual_scale``
  inside the prior's head (``head_gate_hu``: where the prior's low-resolution sCT is above
  -500 HU, grown by one voxel; outside, the prior's air is kept), clipped to the mapping's
  range: ``S^3`` voxels like every model's (``forward``: one sample
  from a fixed seed; :meth:`sample`: ``N`` samples from a ``torch.Generator``).

Measured on the project's 2-core CPU with one thread (a shared machine): the UNet at 32^3
with widths 32/64/64 (2.9 M parameters) takes 0.7-0.9 s forward and 2.3-2.9 s forward +
backward; at 64^3 even widths 16/32/32 take 3.3 s forward; the CNN-INR prior takes 11.5 s at
128^3. So the shipped design diffuses at 32^3 (8 mm voxels): a sample costs the prior once
plus ``sample_steps`` UNet passes.
"""
from __future__ import annotations

import collections
import hashlib
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from ..errors import InputError
from ..geometry import ProjectionGeometry, canonical_grid
from .common import (ModelSpec, ViewLifter, check_choice, check_float, check_int, check_ints,
                     check_views, layer_defaults, make_spec)
from .intensity import get_mapping

SCHEDULES = ("linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine")
PREDICTIONS = ("epsilon", "sample", "v_prediction")
_GEOMETRY_KEYS = ("sad", "sid", "pixels", "detector_size", "isocenter", "normal", "vup")


def _same_geometry(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Two :meth:`ProjectionGeometry.to_dict` describe the same projection (to 1e-6)."""
    ga = ProjectionGeometry.from_dict(dict(a)).to_dict()
    gb = ProjectionGeometry.from_dict(dict(b)).to_dict()
    return all(np.allclose(np.asarray(ga[k], float), np.asarray(gb[k], float), atol=1e-6)
               for k in _GEOMETRY_KEYS)


class ConditionalDiffusion(nn.Module):
    """Residual conditional diffusion (see the module doc).

    Args:
        views, image_size, output_size, output_spacing, geometry, intensity: the spec (as
            every model's; ``output_size`` is the size of the returned sCT, the prior's).
        prior: the frozen prior: a catalog name or a package file (``None``: none, the
            residual is on top of air).
        prior_sha256: the prior package's SHA-256; when given, another file is refused
            (``None``: the loaded prior's digest is recorded in the spec).
        diffusion_size: side of the low-resolution grid the diffusion runs on (a multiple of
            ``2^(len(channels) - 1)``).
        channels: the UNet's widths per level (MONAI ``DiffusionModelUNet``).
        res_blocks: residual blocks per level.
        norm_groups: group-norm groups (divides every width).
        train_timesteps: the DDPM chain's length.
        schedule: the noise schedule (MONAI's names).
        prediction_type: ``"v_prediction"`` (default), ``"epsilon"`` or ``"sample"``.
        sample_steps: DDIM steps of :meth:`sample` by default (1 to ``train_timesteps``).
        eta: DDIM's stochasticity (0: deterministic given the starting noise).
        residual_scale: the residual (model intensity) times this is what is diffused.
        head_gate_hu: the sampled residual is added only inside the prior's head: its
            low-resolution sCT above this HU, grown by one voxel (the gate upsampled
            trilinearly, a soft edge); outside, the prior's sCT (air) is kept. ``None``:
            everywhere. (The residual is zero in air by construction; its sampling noise
            there would only blur the background.)
        cache: conditions (and prior sCTs) kept per input, least recently used first out
            (the training sees the same cases every epoch; the prior is frozen).
    """

    name = "diffusion"

    def __init__(self, *, views: Sequence[str] = ("ap", "lateral"), image_size: int = 64,
                 output_size: int = 128, output_spacing: float | None = None,
                 geometry: Mapping[str, ProjectionGeometry | Mapping[str, Any]] | None = None,
                 intensity: str = "hu_compand", prior: str | None = "cnn_inr_real128",
                 prior_sha256: str | None = None, diffusion_size: int = 32,
                 channels: Sequence[int] = (32, 64, 64), res_blocks: int = 1,
                 norm_groups: int = 8, train_timesteps: int = 1000,
                 schedule: str = "scaled_linear_beta", prediction_type: str = "v_prediction",
                 sample_steps: int = 10, eta: float = 0.0, residual_scale: float = 15.0,
                 head_gate_hu: float | None = -500.0, cache: int = 512) -> None:
        super().__init__()
        name = self.name
        channels = check_ints(name, "channels", channels, 1, min_length=1)
        size = check_int(name, "diffusion_size", diffusion_size, 4)
        if size % (2 ** (len(channels) - 1)):
            raise ValueError(f"{name}: diffusion_size {size} must be a multiple of "
                             f"{2 ** (len(channels) - 1)} ({len(channels)} levels)")
        res_blocks = check_int(name, "res_blocks", res_blocks)
        norm_groups = check_int(name, "norm_groups", norm_groups)
        if any(c % norm_groups for c in channels):
            raise ValueError(f"{name}: norm_groups {norm_groups} must divide every width "
                             f"{channels}")
        train_timesteps = check_int(name, "train_timesteps", train_timesteps, 2)
        check_choice(name, "schedule", schedule, SCHEDULES)
        check_choice(name, "prediction_type", prediction_type, PREDICTIONS)
        sample_steps = check_int(name, "sample_steps", sample_steps)
        if sample_steps > train_timesteps:
            raise ValueError(f"{name}: sample_steps must be at most train_timesteps "
                             f"({train_timesteps}), got {sample_steps}")
        eta = check_float(name, "eta", eta, 0.0, 1.0)
        residual_scale = check_float(name, "residual_scale", residual_scale, 0.0, 1e6)
        if residual_scale == 0:
            raise ValueError(f"{name}: residual_scale must be positive")
        cache = check_int(name, "cache", cache, 0)
        if head_gate_hu is not None:
            head_gate_hu = check_float(name, "head_gate_hu", head_gate_hu, -1000.0, 1000.0)
        if prior is not None and not (isinstance(prior, str) and prior.strip()):
            raise ValueError(f"{name}: prior must be a catalog name, a package file or null, "
                             f"got {prior!r}")
        digest = self._prior_digest(prior, prior_sha256)
        layers = {"prior": prior, "prior_sha256": digest, "diffusion_size": size,
                  "channels": channels, "res_blocks": res_blocks, "norm_groups": norm_groups,
                  "train_timesteps": train_timesteps, "schedule": schedule,
                  "prediction_type": prediction_type, "sample_steps": sample_steps,
                  "eta": eta, "residual_scale": residual_scale, "head_gate_hu": head_gate_hu,
                  "cache": cache}
        self.spec: ModelSpec = make_spec(
            name, views=views, image_size=image_size, output_size=output_size,
            output_spacing=output_spacing, geometry=geometry, intensity=intensity, layers=layers)
        self.size = size
        self.layers = layers
        self.mapping = get_mapping(self.spec.intensity)
        self.lifter = ViewLifter(self.spec.projections(), self.spec.field_mm, "perspective")
        nv = len(self.spec.views)
        self.unet = DiffusionModelUNet(
            spatial_dims=3, in_channels=2 + nv, out_channels=1, channels=channels,
            attention_levels=(False,) * len(channels), num_res_blocks=res_blocks,
            norm_num_groups=norm_groups, with_conditioning=False)
        # not submodules: the schedulers' tables and the prior stay out of the state_dict
        object.__setattr__(self, "_prior", None)
        object.__setattr__(self, "_train_scheduler", DDPMScheduler(
            train_timesteps, schedule=schedule, prediction_type=prediction_type,
            clip_sample=False))
        object.__setattr__(self, "_cache", collections.OrderedDict())
        object.__setattr__(self, "_prior_ref", prior)  # loaded at first use (:attr:`prior`)

    # -- the prior ------------------------------------------------------------------------
    @staticmethod
    def _prior_digest(prior: str | None, sha256: str | None) -> str | None:
        """The SHA-256 of the prior package (catalog name or file), read without loading it;
        an :class:`~XRayToCTLib.errors.InputError` when it differs from ``sha256``."""
        if prior is None:
            return None
        from .package import resolve_model, sha256_file  # noqa: PLC0415 (imports the registry)
        path = resolve_model(prior)
        digest = sha256_file(path)
        if sha256 is not None and digest.lower() != str(sha256).lower():
            raise InputError(path, f"the diffusion model was trained on top of the prior "
                                   f"{prior!r} with SHA-256 {str(sha256)[:12]}..., this file "
                                   f"has {digest[:12]}...")
        return digest

    def set_prior(self, module: nn.Module | None, *, record: bool = True) -> None:
        """Use ``module`` (a reconstruction model with a spec: same views, image size and
        geometry, same intensity mapping) as the frozen prior, or none. ``record`` writes
        ``prior`` / ``prior_sha256`` as ``None`` into the spec (an embedded prior has no
        package to find again)."""
        if module is not None:
            ps = module.spec
            bad = [v for v in self.spec.views if v not in ps.views
                   or not _same_geometry(ps.geometry[v], self.spec.geometry[v])]
            if bad or ps.image_size != self.spec.image_size or ps.intensity != self.spec.intensity:
                raise ValueError(f"{self.name}: the prior {ps.name} does not fit (views "
                                 f"{list(ps.views)}, image size {ps.image_size}, intensity "
                                 f"{ps.intensity}; differing view geometry: {bad})")
            if not math.isclose(ps.field_mm, self.spec.field_mm, rel_tol=1e-6) \
                    and not hasattr(module, "render"):
                raise ValueError(f"{self.name}: the prior covers {ps.field_mm} mm, this model "
                                 f"{self.spec.field_mm} mm")
            module.eval().requires_grad_(False)
        object.__setattr__(self, "_prior", module)
        object.__setattr__(self, "_prior_ref", None)
        self._cache.clear()
        if record:
            self.spec.config.update(prior=None, prior_sha256=None)

    @property
    def prior(self) -> nn.Module | None:
        """The frozen prior (loaded from its package at first use; its SHA-256 checked
        against the spec's ``prior_sha256``), or None."""
        if self._prior is None and self._prior_ref is not None:
            from .package import load_model  # noqa: PLC0415 (package imports the registry)
            with torch.device("cpu"):
                module, info = load_model(self._prior_ref)
            self._prior_digest(info["path"], self.layers["prior_sha256"])
            self.set_prior(module, record=False)
        return self._prior

    def _prior_volume(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """The prior's sCT of normalised views ``x`` on the canonical grid of ``size^3``
        voxels (model intensity, ``[B, 1, size, size, size]``)."""
        b = x.shape[0]
        if self.prior is None:
            air = float(self.mapping.to_model(torch.tensor(-1000.0)))
            return torch.full((b, 1, size, size, size), air, device=x.device)
        prior = self.prior.to(x.device)
        idx = [prior.spec.views.index(v) for v in self.spec.views]
        xp = x[:, idx] if len(idx) == len(prior.spec.views) else x
        with torch.no_grad():
            if hasattr(prior, "render"):
                names = list(self.spec.views) if len(idx) != len(prior.spec.views) else None
                kw = {"view_names": names} if names else {}
                y = prior.render(xp, canonical_grid(size, self.spec.field_mm), **kw)
            else:
                y = prior(xp)
                if y.shape[-1] != size:
                    y = F.interpolate(y, size=(size,) * 3, mode="trilinear", align_corners=False)
        return y.float()

    # -- conditioning ----------------------------------------------------------------------
    def _cached(self, kind: str, x: torch.Tensor, make) -> torch.Tensor:
        """``make(x)`` per case, kept by the hash of the case's views (LRU, ``cache``)."""
        if not self.layers["cache"]:
            return make(x)
        out = []
        for i in range(x.shape[0]):
            key = (kind, hashlib.sha1(x[i].detach().float().cpu().numpy().tobytes()).hexdigest())
            hit = self._cache.get(key)
            if hit is None:
                hit = make(x[i:i + 1])[0].detach()
                self._cache[key] = hit
                while len(self._cache) > self.layers["cache"]:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
            out.append(hit.to(x.device))
        return torch.stack(out)

    def condition(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + V, s, s, s]``: the prior's sCT and the back-projected views on the
        low-resolution grid (``s = diffusion_size``), for normalised views ``[B, V, P, P]``."""
        check_views(x, self.spec)

        def make(v: torch.Tensor) -> torch.Tensor:
            bp = self.lifter(v[:, :, None].float(), self.size)[:, :, 0]  # [B, V, s, s, s]
            return torch.cat([self._prior_volume(v, self.size), bp], dim=1)
        return self._cached("low", x, make)

    def prior_full(self, x: torch.Tensor) -> torch.Tensor:
        """The prior's sCT on the output grid ``[B, 1, S, S, S]`` (model intensity)."""
        return self._cached("full", x, lambda v: self._prior_volume(v, self.spec.output_size))

    def training_grid(self):
        """The low-resolution canonical grid the diffusion (and its training's projection
        term) works on."""
        return canonical_grid(self.size, self.spec.field_mm)

    def downsample(self, volume: torch.Tensor) -> torch.Tensor:
        """``[B, 1, S, S, S]`` -> area average on the low-resolution grid."""
        if volume.shape[-1] == self.size:
            return volume
        return F.interpolate(volume, size=(self.size,) * 3, mode="area")

    # -- training --------------------------------------------------------------------------
    def diffusion_loss(self, x: torch.Tensor, target: torch.Tensor,
                       generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One DDPM training draw: ``(loss, clean, target_low)``.

        ``x`` normalised views ``[B, V, P, P]``, ``target`` ``[B, 1, S, S, S]`` in model
        intensity. A random timestep and noise per case; ``loss`` is the mean squared error of
        the UNet's output against its ``prediction_type``'s target; ``clean`` the predicted
        clean volume on the low-resolution grid (prior + predicted residual, model
        intensity, differentiable: the projection-consistency term uses it) and
        ``target_low`` the target there."""
        cond = self.condition(x)
        prior_low = cond[:, :1]
        target_low = self.downsample(target.float())
        r0 = (target_low - prior_low) * self.layers["residual_scale"]
        sched = self._train_scheduler
        b = x.shape[0]
        t = torch.randint(0, sched.num_train_timesteps, (b,), generator=generator).to(x.device)
        noise = torch.randn(r0.shape, generator=generator).to(x.device)
        xt = sched.add_noise(r0, noise, t)
        out = self.unet(torch.cat([xt, cond], dim=1), t)
        a = sched.alphas_cumprod.to(x.device)[t].float().reshape(b, 1, 1, 1, 1)
        kind = self.layers["prediction_type"]
        if kind == "v_prediction":
            goal = sched.get_velocity(r0, noise, t)
            r_hat = a.sqrt() * xt - (1 - a).sqrt() * out
        elif kind == "epsilon":
            goal = noise
            r_hat = (xt - (1 - a).sqrt() * out) / a.sqrt().clamp(min=1e-3)
        else:
            goal, r_hat = r0, out
        loss = F.mse_loss(out.float(), goal.float())
        clean = prior_low + r_hat / self.layers["residual_scale"]
        return loss, clean, target_low

    # -- sampling --------------------------------------------------------------------------
    def sampler_settings(self, steps: int | None = None, eta: float | None = None
                         ) -> dict[str, Any]:
        """The sampler as it runs (for the JSON of a reconstruction)."""
        L = self.layers
        return {"sampler": "DDIM (MONAI DDIMScheduler)", "steps": int(steps or L["sample_steps"]),
                "eta": float(L["eta"] if eta is None else eta),
                "train_timesteps": L["train_timesteps"], "schedule": L["schedule"],
                "prediction_type": L["prediction_type"], "diffusion_size": self.size,
                "diffusion_spacing_mm": self.spec.field_mm / self.size,
                "residual_scale": L["residual_scale"], "head_gate_hu": L["head_gate_hu"],
                "prior": L["prior"],
                "prior_sha256": L["prior_sha256"],
                "output": "prior sCT + trilinear upsampling of the sampled residual (inside "
                          "the prior's head, grown by one voxel, when head_gate_hu is set)"}

    def residual_gate(self, prior_low: torch.Tensor, size: Sequence[int]) -> torch.Tensor | None:
        """Where the sampled residual is added (``head_gate_hu``): ``[B, 1, *size]`` in
        [0, 1] from the prior's low-resolution sCT, or None (everywhere; also without a
        prior)."""
        hu = self.layers["head_gate_hu"]
        if hu is None or self.prior is None:
            return None
        inside = (prior_low > float(self.mapping.to_model(torch.tensor(float(hu))))).float()
        inside = F.max_pool3d(inside, 3, stride=1, padding=1)  # grown by one voxel
        return F.interpolate(inside, size=tuple(size), mode="trilinear", align_corners=False)

    def set_sample_steps(self, steps: int) -> None:
        """Change the default number of DDIM steps (the spec's ``sample_steps``: a package
        saved afterwards keeps it)."""
        steps = check_int(self.name, "sample_steps", steps)
        if steps > self.layers["train_timesteps"]:
            raise ValueError(f"{self.name}: sample_steps must be at most train_timesteps "
                             f"({self.layers['train_timesteps']}), got {steps}")
        self.layers["sample_steps"] = self.spec.config["sample_steps"] = steps

    @torch.no_grad()
    def sample(self, x: torch.Tensor, samples: int = 1, *, steps: int | None = None,
               eta: float | None = None, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """``samples`` sCTs of normalised views ``x`` ``[B, V, P, P]``:
        ``[samples, B, 1, S, S, S]`` in model intensity. The starting noise (and DDIM's noise
        when ``eta > 0``) comes from ``generator`` (a CPU ``torch.Generator``; the same seed
        gives the same samples on any device)."""
        samples = check_int(self.name, "samples", samples)
        steps = check_int(self.name, "steps", steps or self.layers["sample_steps"])
        eta = float(self.layers["eta"] if eta is None else eta)
        L = self.layers
        cond = self.condition(x)
        full = self.prior_full(x)
        gate = self.residual_gate(cond[:, :1], full.shape[-3:])
        sched = DDIMScheduler(L["train_timesteps"], schedule=L["schedule"],
                              prediction_type=L["prediction_type"], clip_sample=False)
        sched.set_timesteps(min(steps, L["train_timesteps"]))
        b, dev = x.shape[0], x.device
        lo, hi = (float(v) for v in self.mapping.to_model(torch.tensor([-1000.0, 1000.0])))
        out = []
        for _ in range(samples):
            r = torch.randn(cond[:, :1].shape, generator=generator).to(dev)
            for t in sched.timesteps:
                tt = torch.full((b,), int(t), device=dev, dtype=torch.long)
                pred = self.unet(torch.cat([r, cond], dim=1), tt)
                noise_gen = generator if eta > 0 else None
                r, _ = sched.step(pred, int(t), r, eta, noise_gen)
            res = F.interpolate(r / L["residual_scale"], size=full.shape[-3:],
                                mode="trilinear", align_corners=False)
            out.append((full + res if gate is None else full + gate * res).clamp(lo, hi))
        return torch.stack(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One sample from the fixed seed 0: ``[B, 1, S, S, S]`` (validation, exports)."""
        return self.sample(x, 1, generator=torch.Generator().manual_seed(0))[0]


DEFAULTS: dict[str, Any] = layer_defaults(ConditionalDiffusion)
"""The layer arguments and their defaults."""

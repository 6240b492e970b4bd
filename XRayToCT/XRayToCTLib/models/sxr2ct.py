"""S-XR2CT of seed 004 (Hor, Yang, Kim 2025): a CT from one radiograph (``sxr2ct``).

* **Likelihood image.** With per-pixel statistics ``mu``, ``sigma`` of the (normalised)
  training DRRs of the view, the input ``X`` gets a second channel
  ``L = log sqrt(2 pi sigma^2) + (X - mu)^2 / (2 sigma^2)`` (the seed's equation: how
  unlikely each pixel is under the training population). ``mu`` and ``sigma`` are buffers
  (``view_mean``, ``view_std``, ``[V, P, P]``), so they ship in the package and inference
  needs nothing else. They are set by :meth:`SXR2CT.set_view_statistics`; the training
  engine computes them over the training split's DRRs of the model's views before the
  first step (``training.engine.view_statistics``); a fine-tuning run keeps its package's.
  Until they are set they are ``mu = 0``, ``sigma = 1``. ``sigma`` is floored at
  ``std_floor`` (normalised views are exactly 0 in the air around the head, where the
  training DRRs do not vary).
* **2D mapping network.** A ConvNeXt (Liu et al. 2022) encoder of ``[X, L]``: a 3x3 stem,
  then per stage (all but the first) a channel LayerNorm and a 2x2 stride-2 convolution,
  and ``encoder_depths`` ConvNeXt blocks (depthwise 7x7 convolution, channel LayerNorm,
  inverted-bottleneck MLP ``C -> 4C -> C`` with GELU, layer scale, residual). Each stage's
  map, with the likelihood image average-pooled to its size concatenated (the seed:
  "the likelihood image is downsampled and concatenated with the X-ray features"), is
  1x1-compressed in 2D and put into 3D along the view's rays by the project's
  :class:`~.common.ViewLifter` (the lifting of ``x2ct_gan``'s skip connections).
* **3D encoder-decoder with the template prior.** The head CT template that ships with the
  extension (Rorden et al. 2012; :func:`~XRayToCTLib.baselines.shipped_template_hu`: HU,
  centred on its head centre as the canonical frame is) on the model's canonical output
  grid (anti-aliased, :func:`~XRayToCTLib.hu.coarsen`, then
  :func:`~XRayToCTLib.preprocess.resample_to_grid`), in the model's intensity, is the
  ``template`` buffer ``[1, 1, S, S, S]``. Average-pooled to every level, it is
  concatenated with the features of every 3D encoder and decoder level (the seed: "the 3D
  encoder takes a template CT image as a module parameter and the X-ray style features as
  inputs, concatenating them at each layer"). Encoder level ``l`` (``S / 2^l`` voxels):
  ``cat(down(previous level), lifted 2D stage l, template)`` through two 3x3x3
  convolutions (instance norm, ReLU; MONAI ``Convolution``); decoder: transposed-convolution
  upsampling, ``cat(up, encoder skip, template)``, two 3x3x3 convolutions. At the full
  resolution (level 0) one convolution each: there a convolution costs 8x a level-1 one
  (about 0.4 s forward + backward at 64^3 on one CPU thread).
* **Self-attention** after the first decoder level (the seed follows Swin UNETR): its
  ``(S / 2^(n-2))^3`` voxels are tokens (a learned position embedding added) through a
  transformer block of MONAI's :class:`~monai.networks.blocks.SABlock` (multi-head
  self-attention) and ``MLPBlock``, pre-norm, residual (:class:`SelfAttention3D`): 512
  tokens at ``S = 64`` with 5 levels.
* **Output.** A 3x3x3 convolution and the output activation. The template is an input of
  every level only, as in the seed. With ``template_residual`` (off by default; not in the
  seed) the sigmoid's argument is the convolution plus ``logit(template)``, so that the
  untrained network outputs the template and learns the difference. Measured against it:
  trained so for 3 CPU epochs on the real-heads + phantoms dataset (``configs/
  sxr2ct_ap64.yaml`` with it on), the output stayed close to the (adult, real) template, which
  fits the generated phantom heads of the test split badly: head MAE 406 HU, the template
  alone 439 HU, against 219 HU for ``x2ct_gan_single`` trained the same way (the saturated
  logits of air and bone are far to move).

Losses (the training engine's): X2CT-GAN's least-squares adversarial (the project's
conditional 3D PatchGAN, :mod:`.discriminator`), L1 reconstruction and DRR projection
consistency, plus the perceptual term ``lambda_perc`` (:class:`~XRayToCTLib.training.losses.
PerceptualLoss`): no pretrained network can be downloaded, so its features are those of the
frozen 2D encoders of the project's trained ``cnn_inr_phantom64`` on the AP and lateral DRRs
of prediction and ground truth. Weights ``lambda_adv 0.1, lambda_rec 10, lambda_proj 10,
lambda_perc 1`` (seed 004).

``forward(views [B, V, P, P])`` (normalised with :func:`~XRayToCTLib.models.normalize_views`;
``V = 1``: ``["ap"]`` by default, ``["lateral"]`` works the same) ->
``[B, 1, S, S, S]`` in the intensity mapping's space, ``[z, y, x]`` on the canonical grid.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution, MLPBlock, SABlock

from ..baselines import shipped_template_hu
from ..constants import AIR_HU
from ..geometry import ProjectionGeometry, canonical_grid
from ..hu import coarsen
from ..preprocess import resample_to_grid
from .common import (LIFT_MODES, OUTPUT_ACTIVATIONS, ModelSpec, ViewLifter, activation_layer,
                     check_choice, check_float, check_int, check_ints, check_views,
                     layer_defaults, make_spec)
from .intensity import get_mapping

ACT = ("relu", {"inplace": True})
NORM = "instance"


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a ``[B, C, H, W]`` map (ConvNeXt's "channels first")."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """One ConvNeXt block: depthwise 7x7 convolution, LayerNorm, ``C -> 4C`` linear, GELU,
    ``4C -> C`` linear, layer scale (``1e-6`` at the start), residual:
    ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, channels: int, kernel: int = 7, expansion: int = 4,
                 layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pwconv1 = nn.Linear(channels, expansion * channels)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(expansion * channels, channels)
        self.gamma = nn.Parameter(torch.full((channels,), float(layer_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtEncoder2D(nn.Module):
    """ConvNeXt 2D encoder: ``[B, in_channels, P, P]`` -> one map per stage, stage ``l``
    ``[B, channels[l], P / 2^l, P / 2^l]`` (a 3x3 stem and LayerNorm; every later stage
    starts with LayerNorm and a 2x2 stride-2 convolution)."""

    def __init__(self, in_channels: int, channels: Sequence[int], depths: Sequence[int]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, padding=1),
                                  ChannelLayerNorm(channels[0]))
        self.down = nn.ModuleList(
            nn.Identity() if i == 0 else nn.Sequential(
                ChannelLayerNorm(channels[i - 1]),
                nn.Conv2d(channels[i - 1], channels[i], 2, stride=2))
            for i in range(len(channels)))
        self.stages = nn.ModuleList(nn.Sequential(*[ConvNeXtBlock(c) for _ in range(d)])
                                    for c, d in zip(channels, depths))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for down, stage in zip(self.down, self.stages):
            x = stage(down(x))
            out.append(x)
        return out


class SelfAttention3D(nn.Module):
    """A pre-norm transformer block on tokens ``[B, N, C]``: ``x + SA(LN(x))`` then
    ``x + MLP(LN(x))`` (MONAI's ``SABlock`` and ``MLPBlock``, GELU). MONAI's
    ``TransformerBlock`` is the same but always builds a cross-attention norm that
    self-attention leaves without gradients (unused parameters: DDP refuses them)."""

    def __init__(self, channels: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.attn = SABlock(channels, heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = MLPBlock(channels, mlp * channels, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _block3(cin: int, cout: int, convs: int = 2) -> nn.Sequential:
    """``convs`` 3x3x3 convolutions with instance norm and ReLU (MONAI ``Convolution``)."""
    return nn.Sequential(*[Convolution(3, cin if i == 0 else cout, cout, kernel_size=3,
                                       act=ACT, norm=NORM) for i in range(convs)])


def likelihood_image(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Seed 004's likelihood image ``log sqrt(2 pi std^2) + (x - mean)^2 / (2 std^2)``,
    elementwise (broadcasting: ``x [B, V, P, P]``, ``mean`` and ``std`` ``[V, P, P]``)."""
    return 0.5 * torch.log(2.0 * math.pi * std ** 2) + (x - mean) ** 2 / (2.0 * std ** 2)


def template_prior(grid_size: int, field_mm: float, intensity: str) -> torch.Tensor:
    """The shipped head CT template (HU, canonical frame:
    :func:`~XRayToCTLib.baselines.shipped_template_hu`) on the canonical grid of
    ``grid_size^3`` voxels over ``field_mm``, anti-aliased to its voxel size, air outside the
    template, in the intensity mapping's space: ``[1, 1, S, S, S]`` float32, ``[z, y, x]``."""
    grid = canonical_grid(int(grid_size), float(field_mm))
    hu = coarsen(shipped_template_hu(), float(grid.spacing[0]), AIR_HU)
    arr = resample_to_grid(hu, grid, None, "linear", AIR_HU).array
    model = get_mapping(intensity).to_model(torch.from_numpy(np.ascontiguousarray(arr)))
    return model.to(torch.float32)[None, None]


class SXR2CT(nn.Module):
    """S-XR2CT generator (see the module doc).

    Args:
        views: the one input view, ``["ap"]`` (default, the seed's frontal view) or
            ``["lateral"]`` (any one preset view name works).
        image_size: ``P``, the input image is ``P x P`` pixels (a multiple of ``2^(n-1)``,
            ``n = len(encoder_channels)``).
        output_size: ``S``, the output grid is ``S^3`` voxels (a multiple of ``2^(n-1)``, and
            ``S / 2^(n-1) >= 2``).
        output_spacing: output voxel size in mm; default: the canonical field of view
            (256 mm) over ``S``.
        geometry: view name -> :class:`ProjectionGeometry` (or its ``to_dict()``) with
            ``P x P`` pixels, isocentre at the origin; default: the project's default geometry.
        intensity: the output intensity mapping (:mod:`.intensity`).
        encoder_channels: ``n`` channels of the ConvNeXt stages (finest first).
        encoder_depths: ``n`` numbers of ConvNeXt blocks per stage.
        volume_channels: ``n`` channels of the 3D encoder/decoder levels (``S / 2^l``
            voxels at level ``l``; the 2D stage ``l`` is lifted to level ``l``).
        attention_heads: heads of the self-attention block (divides ``volume_channels[n-2]``).
        attention_mlp: the attention block's MLP width, as a multiple of its channels.
        std_floor: the smallest ``sigma`` of the likelihood image (normalised units).
        template_residual: add ``logit(template)`` to the sigmoid's argument (see the module
            doc; off by default); needs ``output_activation="sigmoid"``.
        lift: how 2D maps reach 3D, ``"perspective"`` or ``"parallel"`` (:class:`ViewLifter`).
        output_activation: ``"sigmoid"``, ``"relu"``, ``"clamp"`` or ``"none"``.

    Buffers (in the package): ``view_mean``, ``view_std`` ``[V, P, P]`` (the likelihood
    image's statistics), ``template`` ``[1, 1, S, S, S]`` (the prior, model intensity).
    """

    name = "sxr2ct"
    default_views = ("ap",)

    def __init__(self, *, views: Sequence[str] | None = None, image_size: int = 128,
                 output_size: int = 128, output_spacing: float | None = None,
                 geometry: Mapping[str, ProjectionGeometry | Mapping[str, Any]] | None = None,
                 intensity: str = "hu_compand",
                 encoder_channels: Sequence[int] = (32, 64, 96, 128, 160),
                 encoder_depths: Sequence[int] = (1, 1, 2, 2, 1),
                 volume_channels: Sequence[int] = (8, 16, 32, 64, 96),
                 attention_heads: int = 4, attention_mlp: int = 2, std_floor: float = 0.05,
                 template_residual: bool = False, lift: str = "perspective",
                 output_activation: str = "sigmoid") -> None:
        super().__init__()
        name = self.name
        ench = check_ints(name, "encoder_channels", encoder_channels, 1, 2)
        depths = check_ints(name, "encoder_depths", encoder_depths, 0, 2)
        vch = check_ints(name, "volume_channels", volume_channels, 1, 2)
        n = len(ench)
        if not len(depths) == len(vch) == n:
            raise ValueError(f"{name}: encoder_channels, encoder_depths and volume_channels "
                             f"need the same number of entries (levels), got {len(ench)}, "
                             f"{len(depths)}, {len(vch)}")
        heads = check_int(name, "attention_heads", attention_heads)
        if vch[n - 2] % heads:
            raise ValueError(f"{name}: attention_heads {heads} must divide the attention "
                             f"level's channels volume_channels[{n - 2}] = {vch[n - 2]}")
        mlp = check_int(name, "attention_mlp", attention_mlp)
        std_floor = check_float(name, "std_floor", std_floor, 1e-6, 1.0)
        if not isinstance(template_residual, bool):
            raise ValueError(f"{name}: template_residual must be true or false, "
                             f"got {template_residual!r}")
        check_choice(name, "lift", lift, LIFT_MODES)
        check_choice(name, "output_activation", output_activation, OUTPUT_ACTIVATIONS)
        if template_residual and output_activation != "sigmoid":
            raise ValueError(f"{name}: template_residual needs output_activation sigmoid, "
                             f"got {output_activation!r}")
        views = self.default_views if views is None else views
        if isinstance(views, str) or not isinstance(views, Sequence) or len(views) != 1:
            raise ValueError(f"{name}: a single-view model takes exactly one view, got {views!r}")
        self.spec: ModelSpec = make_spec(
            name, views=views, image_size=image_size, output_size=output_size,
            output_spacing=output_spacing, geometry=geometry, intensity=intensity, layers={
                "encoder_channels": ench, "encoder_depths": depths, "volume_channels": vch,
                "attention_heads": heads, "attention_mlp": mlp, "std_floor": std_floor,
                "template_residual": template_residual, "lift": lift,
                "output_activation": output_activation})
        p, s = self.spec.image_size, self.spec.output_size
        f = 2 ** (n - 1)
        if p % f or s % f or s // f < 2 or p // f < 2:
            raise ValueError(f"{name}: image_size {p} and output_size {s} must be multiples of "
                             f"2^{n - 1} (len(encoder_channels) = {n}) with at least 2 pixels "
                             f"/ voxels left at the last level; use fewer levels")
        self.n = n
        self.std_floor = std_floor
        self.template_residual = template_residual
        self.register_buffer("view_mean", torch.zeros(1, p, p))
        self.register_buffer("view_std", torch.ones(1, p, p))
        self.register_buffer("template", template_prior(s, self.spec.field_mm,
                                                        self.spec.intensity))
        self.lifter = ViewLifter(self.spec.projections(), self.spec.field_mm, lift)
        self.encoder2d = ConvNeXtEncoder2D(2, ench, depths)
        # 2D stage l (+ the pooled likelihood image) -> vch[l] channels, lifted to level l
        self.compress = nn.ModuleList(Convolution(2, ench[lv] + 1, vch[lv], kernel_size=1,
                                                  act=ACT, norm=NORM) for lv in range(n))
        # 3D encoder: cat(down(previous), lifted, template)
        self.enc3d = nn.ModuleList(_block3((vch[lv - 1] if lv else 0) + vch[lv] + 1, vch[lv],
                                           1 if lv == 0 else 2) for lv in range(n))
        self.down3d = nn.ModuleList(Convolution(3, vch[lv], vch[lv], strides=2, kernel_size=3,
                                                act=ACT, norm=NORM) for lv in range(n - 1))
        # 3D decoder: level l from l + 1: up, cat(up, skip, template)
        self.up3d = nn.ModuleList(Convolution(3, vch[lv + 1], vch[lv], strides=2, kernel_size=3,
                                              act=ACT, norm=NORM, is_transposed=True,
                                              padding=1, output_padding=1)
                                  for lv in range(n - 1))
        self.dec3d = nn.ModuleList(_block3(2 * vch[lv] + 1, vch[lv], 1 if lv == 0 else 2)
                                   for lv in range(n - 1))
        # self-attention after the first decoder level (level n - 2)
        a = n - 2
        self.attention_size = s // 2 ** a
        self.position = nn.Parameter(torch.zeros(1, self.attention_size ** 3, vch[a]))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.attention = SelfAttention3D(vch[a], heads, mlp)
        self.head = nn.Conv3d(vch[0], 1, 3, padding=1)
        self.activation = activation_layer(output_activation)

    # -- the likelihood image ----------------------------------------------------------------
    @torch.no_grad()
    def set_view_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the per-pixel mean and standard deviation ``[V, P, P]`` of the normalised
        training views (``std`` floored at ``std_floor``)."""
        shape = tuple(self.view_mean.shape)
        mean, std = torch.as_tensor(mean), torch.as_tensor(std)
        if tuple(mean.shape) != shape or tuple(std.shape) != shape:
            raise ValueError(f"{self.name}: view statistics must be {list(shape)}, got "
                             f"{list(mean.shape)} and {list(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError(f"{self.name}: view statistics must be finite")
        self.view_mean.copy_(mean.to(self.view_mean))
        self.view_std.copy_(std.to(self.view_std).clamp_min(self.std_floor))

    def likelihood(self, views: torch.Tensor) -> torch.Tensor:
        """The likelihood image ``[B, V, P, P]`` of normalised views (see the module doc)."""
        return likelihood_image(views, self.view_mean, self.view_std)

    def template_at(self, level: int) -> torch.Tensor:
        """The template prior average-pooled to level ``level`` (``S / 2^level`` voxels)."""
        return self.template if level == 0 else F.avg_pool3d(self.template, 2 ** level)

    # -- the network -------------------------------------------------------------------------
    def forward(self, views: torch.Tensor) -> torch.Tensor:
        check_views(views, self.spec)
        b, s, n = views.shape[0], self.spec.output_size, self.n
        lik = self.likelihood(views)
        maps = self.encoder2d(torch.cat([views, lik], 1))
        templates = [self.template_at(lv).expand(b, -1, -1, -1, -1) for lv in range(n)]
        skips: list[torch.Tensor] = []
        x = None
        for lv in range(n):
            size = s // 2 ** lv
            m = maps[lv]
            m = torch.cat([m, F.adaptive_avg_pool2d(lik, m.shape[-2:])], 1)
            lifted = self.lifter(self.compress[lv](m)[:, None], size, 0)[:, 0]
            parts = ([self.down3d[lv - 1](x)] if lv else []) + [lifted, templates[lv]]
            x = self.enc3d[lv](torch.cat(parts, 1))
            skips.append(x)
        for lv in range(n - 2, -1, -1):
            x = self.up3d[lv](x)
            x = self.dec3d[lv](torch.cat([x, skips[lv], templates[lv]], 1))
            if lv == n - 2:
                c = x.shape[1]
                tokens = x.flatten(2).transpose(1, 2) + self.position
                x = self.attention(tokens).transpose(1, 2).reshape(b, c, *x.shape[2:])
        out = self.head(x)
        if self.template_residual:
            t = self.template.clamp(1e-3, 1 - 1e-3)
            out = out + torch.log(t / (1 - t))
        return self.activation(out)


DEFAULTS: dict[str, Any] = layer_defaults(SXR2CT)
"""The layer arguments and their defaults."""

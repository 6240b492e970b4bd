"""The X2CT-GAN generator of seed 001 (Ying et al., CVPR 2019, as the seed used it), biplanar
(``x2ct_gan``) and single view (``x2ct_gan_single``).

Per view, a DenseNet 2D encoder (a 7x7 stem, then per stage a stride-2 convolution, a
:class:`DenseBlock` of DenseNet layers, a 1x1 compression). Three connections bring 2D to 3D:

* **A**, a fully connected bottleneck: the encoder's pooled vector -> a ``b^3`` x ``C``
  volume (``b = S / 2^n``);
* **B**, skip connections: each encoder level's map (1x1-compressed in 2D) is put into 3D
  along the view's rays (:class:`~.common.ViewLifter`: ``"perspective"`` follows the real
  DRR geometry, ``"parallel"`` is the paper's copy along the projection axis: AP along y,
  lateral along x), then a 3x3x3 convolution;
* **C**, fusion: at every decoder level the views' 3D features are averaged; the average
  feeds both the views' own decoders and a 3D fusion decoder that also takes its previous
  level, up to the ``S^3`` output (a 7x7x7 convolution and the output activation).

Instance norm and ReLU throughout; upsampling by transposed convolution (MONAI
``Convolution`` blocks). All views' 3D features are built directly in the canonical
``[z, y, x]`` frame, so no per-view axis permutation is needed before fusing.

Two widths: the ``"seed"`` preset is the published network (growth 32, encoder blocks
6-12-24-16-6, decoder channels 16-16-32-64-128-256: 61.7 M parameters with two views), for
GPUs; the default ``"compact"`` preset (growth 16, blocks 3-6-8-8-4, decoder channels
4-16-32-48-64-64, 3x3x3 output convolution: 6.15 M parameters, a 24.6 MB fp32 package)
fits the 25 MB package limit and a CPU. Any width argument can be set on its own (``None``
takes the preset's).
The published code also gave each view branch its own full-resolution decoder and output
head, whose outputs no loss used; they are left out (about 0.1 M parameters at the seed width).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from monai.networks.layers import Conv, get_act_layer, get_norm_layer

from ..geometry import ProjectionGeometry
from .common import (LIFT_MODES, OUTPUT_ACTIVATIONS, ModelSpec, ViewLifter, activation_layer,
                     check_choice, check_float, check_int, check_ints, check_views,
                     layer_defaults, make_spec)

ACT = ("relu", {"inplace": True})
NORM = "instance"

SEED_WIDTH = {
    "stem_channels": 64, "growth_rate": 32, "bn_size": 4,
    "encoder_blocks": [6, 12, 24, 16, 6],
    "decoder_channels": [16, 16, 32, 64, 128, 256],
    "decoder_blocks": [1, 2, 2, 2, 2, 0],
    "fusion_blocks": [1, 1, 1, 1, 1, 0],
    "head_kernel": 7,
}

COMPACT_WIDTH = {
    "stem_channels": 32, "growth_rate": 16, "bn_size": 4,
    "encoder_blocks": [3, 6, 8, 8, 4],
    "decoder_channels": [4, 16, 32, 48, 64, 64],
    "decoder_blocks": [1, 1, 1, 1, 1, 0],
    "fusion_blocks": [1, 1, 1, 1, 1, 0],
    "head_kernel": 3,
}

PRESETS: dict[str, dict[str, Any]] = {"seed": SEED_WIDTH, "compact": COMPACT_WIDTH}
"""Named widths: ``"seed"`` (the published generator) and ``"compact"`` (the default)."""


def _conv3(cin: int, cout: int, k: int = 3) -> Convolution:
    return Convolution(3, cin, cout, kernel_size=k, act=ACT, norm=NORM)


def _up3(cin: int, cout: int) -> Convolution:
    return Convolution(3, cin, cout, strides=2, kernel_size=3, act=ACT, norm=NORM,
                       is_transposed=True, padding=1, output_padding=1)


class DenseLayer(nn.Module):
    """One DenseNet layer (Huang et al. 2017), pre-activation bottleneck: norm, act, 1x1
    convolution to ``bn_size * growth_rate`` channels, norm, act, 3x3 convolution to
    ``growth_rate`` channels (no biases); the output is the input with the new channels
    appended: ``[B, C, *spatial] -> [B, C + growth_rate, *spatial]``.

    The layer names (``layers.norm1`` ... ``layers.conv2``) are those of MONAI's DenseNet
    layers, so the same weights load into either."""

    def __init__(self, spatial_dims: int, in_channels: int, growth_rate: int, bn_size: int,
                 act: str | tuple = ACT, norm: str | tuple = NORM) -> None:
        super().__init__()
        mid = bn_size * growth_rate
        conv = Conv[Conv.CONV, spatial_dims]
        self.layers = nn.Sequential(OrderedDict([
            ("norm1", get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=in_channels)),
            ("relu1", get_act_layer(name=act)),
            ("conv1", conv(in_channels, mid, kernel_size=1, bias=False)),
            ("norm2", get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=mid)),
            ("relu2", get_act_layer(name=act)),
            ("conv2", conv(mid, growth_rate, kernel_size=3, padding=1, bias=False)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.layers(x)], 1)


class DenseBlock(nn.Sequential):
    """``layers`` :class:`DenseLayer` s in a row (children ``denselayer1``, ``denselayer2``,
    ... as in MONAI's DenseNet): ``[B, C, *spatial] -> [B, C + layers * growth_rate,
    *spatial]``."""

    def __init__(self, spatial_dims: int, layers: int, in_channels: int, bn_size: int,
                 growth_rate: int, act: str | tuple = ACT, norm: str | tuple = NORM) -> None:
        super().__init__()
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(
                spatial_dims, in_channels, growth_rate, bn_size, act=act, norm=norm))
            in_channels += growth_rate


class _PreAct(nn.Sequential):
    """Norm, ReLU, then a 2D convolution (DenseNet's pre-activation order)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
        super().__init__(nn.InstanceNorm2d(cin), nn.ReLU(inplace=True),
                         nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2))


class DenseEncoder2D(nn.Module):
    """DenseNet 2D encoder of one view: a reflection-padded 7x7 stem to ``stem_channels``,
    then per entry of ``blocks`` a stride-2 convolution, a :class:`DenseBlock` of that many
    layers and (all but the last stage) a 1x1 compression halving the channels; the last
    stage ends in a global average pool.

    ``forward(x [B, 1, P, P])`` -> ``(skips, vector)``: the stem's and every stage's map but
    the last's (finest first, ``[B, skip_channels[l], P / 2^l, P / 2^l]``) and the pooled
    ``[B, out_channels]`` bottleneck vector."""

    def __init__(self, stem_channels: int, growth_rate: int, bn_size: int,
                 blocks: Sequence[int]) -> None:
        super().__init__()
        c = int(stem_channels)
        self.stem = nn.Sequential(nn.ReflectionPad2d(3), Convolution(
            2, 1, c, kernel_size=7, padding=0, act=ACT, norm=NORM))
        self.skip_channels = [c]
        self.stages = nn.ModuleList()
        for i, layers in enumerate(blocks):
            mods: list[nn.Module] = [_PreAct(c, c, 3, stride=2),
                                     DenseBlock(2, layers, c, bn_size, growth_rate)]
            c = c + layers * growth_rate
            if i == len(blocks) - 1:
                mods.append(nn.AdaptiveAvgPool2d(1))
            else:
                mods.append(_PreAct(c, c // 2, 1))
                c = c // 2
                self.skip_channels.append(c)
            self.stages.append(nn.Sequential(*mods))
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = [self.stem(x)]
        for stage in self.stages:
            skips.append(stage(skips[-1]))
        return skips[:-1], skips[-1].flatten(1)


class X2CTGenerator(nn.Module):
    """X2CT-GAN generator (see the module doc).

    Args:
        views: input view names, in the order of the input's view axis (default AP and
            lateral; AP alone for :class:`X2CTGeneratorSingle`).
        image_size: ``P``, the input images are ``P x P`` pixels (a multiple of ``2^n``,
            ``n = len(encoder_blocks)``, and at least ``2^(n+1)``).
        output_size: ``S``, the output grid is ``S^3`` voxels (a multiple of ``2^n``).
        output_spacing: output voxel size in mm; default: the canonical field of view
            (256 mm) over ``S``.
        geometry: view name -> :class:`ProjectionGeometry` (or its ``to_dict()``) with
            ``P x P`` pixels, isocentre at the origin; default: the project's default
            biplanar geometry.
        intensity: the output intensity mapping (:mod:`.intensity`).
        preset: ``"compact"`` (default) or ``"seed"``: the widths that the width arguments
            left at ``None`` take.
        stem_channels: channels of the encoder's 7x7 stem.
        growth_rate: channels each dense layer adds.
        bn_size: a dense layer's bottleneck is ``bn_size * growth_rate`` channels.
        encoder_blocks: dense layers per encoder stage (``n`` stages, each halving).
        decoder_channels: ``n + 1`` decoder channels, finest (output) level first.
        decoder_blocks: ``n + 1`` numbers of 3x3x3 convolutions of the views' decoders.
        fusion_blocks: ``n + 1`` numbers of 3x3x3 convolutions of the fusion decoder.
        head_kernel: odd kernel size of the output convolution.
        bottleneck_dropout: dropout of the fully connected bottleneck, in ``[0, 1)``.
        lift: how 2D skips reach 3D, ``"perspective"`` or ``"parallel"``
            (:class:`~.common.ViewLifter`).
        output_activation: ``"sigmoid"``, ``"relu"``, ``"clamp"`` or ``"none"``.

    ``forward(views [B, V, P, P])`` -> ``[B, 1, S, S, S]`` in the intensity mapping's space,
    array order ``[z, y, x]`` on the canonical grid (``spec.grid()``); the views normalised
    with :func:`~XRayToCTLib.models.normalize_views`. ``spec`` (:class:`ModelSpec`) holds
    every argument (``spec.config``).
    """

    name = "x2ct_gan"
    default_views = ("ap", "lateral")

    def __init__(self, *, views: Sequence[str] | None = None, image_size: int = 128,
                 output_size: int = 128, output_spacing: float | None = None,
                 geometry: Mapping[str, ProjectionGeometry | Mapping[str, Any]] | None = None,
                 intensity: str = "hu_compand", preset: str = "compact",
                 stem_channels: int | None = None, growth_rate: int | None = None,
                 bn_size: int | None = None, encoder_blocks: Sequence[int] | None = None,
                 decoder_channels: Sequence[int] | None = None,
                 decoder_blocks: Sequence[int] | None = None,
                 fusion_blocks: Sequence[int] | None = None, head_kernel: int | None = None,
                 bottleneck_dropout: float = 0.5, lift: str = "perspective",
                 output_activation: str = "sigmoid") -> None:
        super().__init__()
        name = self.name
        if preset not in PRESETS:
            raise ValueError(f"{name}: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        width = PRESETS[preset]
        pick = lambda key, value: width[key] if value is None else value  # noqa: E731
        stem_channels = check_int(name, "stem_channels", pick("stem_channels", stem_channels))
        growth_rate = check_int(name, "growth_rate", pick("growth_rate", growth_rate))
        bn_size = check_int(name, "bn_size", pick("bn_size", bn_size))
        encoder_blocks = check_ints(name, "encoder_blocks", pick("encoder_blocks", encoder_blocks),
                                    0, 1)
        dch = check_ints(name, "decoder_channels", pick("decoder_channels", decoder_channels), 1)
        dbl = check_ints(name, "decoder_blocks", pick("decoder_blocks", decoder_blocks))
        fbl = check_ints(name, "fusion_blocks", pick("fusion_blocks", fusion_blocks))
        head_kernel = check_int(name, "head_kernel", pick("head_kernel", head_kernel))
        if head_kernel % 2 == 0:
            raise ValueError(f"{name}: head_kernel must be odd, got {head_kernel}")
        bottleneck_dropout = check_float(name, "bottleneck_dropout", bottleneck_dropout, 0.0,
                                         1.0, high_open=True)
        check_choice(name, "lift", lift, LIFT_MODES)
        check_choice(name, "output_activation", output_activation, OUTPUT_ACTIVATIONS)
        n = len(encoder_blocks)
        if not (len(dch) == len(dbl) == len(fbl) == n + 1):
            raise ValueError(f"{name}: decoder_channels, decoder_blocks and fusion_blocks "
                             f"need {n + 1} entries (len(encoder_blocks) + 1)")
        self.spec: ModelSpec = make_spec(
            name, views=self.default_views if views is None else views, image_size=image_size,
            output_size=output_size, output_spacing=output_spacing, geometry=geometry,
            intensity=intensity, layers={
                "preset": preset, "stem_channels": stem_channels, "growth_rate": growth_rate,
                "bn_size": bn_size, "encoder_blocks": encoder_blocks, "decoder_channels": dch,
                "decoder_blocks": dbl, "fusion_blocks": fbl, "head_kernel": head_kernel,
                "bottleneck_dropout": bottleneck_dropout, "lift": lift,
                "output_activation": output_activation})
        p, s = self.spec.image_size, self.spec.output_size
        if s % (2 ** n) or p % (2 ** n) or p // 2 ** n < 2:
            raise ValueError(f"{name}: image_size {p} and output_size {s} must be "
                             f"multiples of 2^{n} (len(encoder_blocks) = {n}), and image_size "
                             f">= 2^{n + 1}; use fewer encoder stages for small images")
        self.n = n
        self.bottom = s // 2 ** n
        self.channels = dch
        nv = len(self.spec.views)
        self.fuse = nv > 1
        self.lifter = ViewLifter(self.spec.projections(), self.spec.field_mm, lift)
        self.encoders = nn.ModuleList(DenseEncoder2D(stem_channels, growth_rate, bn_size,
                                                     encoder_blocks) for _ in range(nv))
        enc = self.encoders[0]
        # connection A
        self.links = nn.ModuleList(nn.Sequential(
            nn.Linear(enc.out_channels, self.bottom ** 3 * dch[n]),
            nn.Dropout(bottleneck_dropout), nn.ReLU(inplace=True))
            for _ in range(nv))
        # connection B: 2D 1x1 compression, lift, 3D convolution
        self.skip2d = nn.ModuleList(nn.ModuleList(
            Convolution(2, enc.skip_channels[lv], dch[lv], kernel_size=1, act=ACT, norm=NORM)
            for lv in range(n)) for _ in range(nv))
        self.skip3d = nn.ModuleList(nn.ModuleList(_conv3(dch[lv], dch[lv]) for lv in range(n))
                                    for _ in range(nv))
        # per-view decoders: compress(cat(x, skip)) at levels < n; blocks + up at levels > 0
        self.compress = nn.ModuleList(nn.ModuleList(_conv3(2 * dch[lv], dch[lv])
                                                    for lv in range(n)) for _ in range(nv))
        self.branch = nn.ModuleList(nn.ModuleList(
            nn.Sequential(*[_conv3(dch[lv], dch[lv]) for _ in range(dbl[lv])],
                          _up3(dch[lv], dch[lv - 1])) if lv > 0 else nn.Identity()
            for lv in range(n + 1)) for _ in range(nv))
        if self.fuse:  # connection C: the fusion decoder
            self.fusion = nn.ModuleList(nn.Sequential(
                *([_conv3(2 * dch[lv], dch[lv])] if lv < n else []),
                *[_conv3(dch[lv], dch[lv]) for _ in range(fbl[lv])],
                *([_up3(dch[lv], dch[lv - 1])] if lv > 0 else []))
                for lv in range(n + 1))
        else:  # single view: the branch decoder's own last level
            self.last = nn.Sequential(*[_conv3(dch[0], dch[0]) for _ in range(dbl[0])])
        self.head = nn.Sequential(nn.Conv3d(dch[0], 1, head_kernel, padding=head_kernel // 2),
                                  activation_layer(output_activation))

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        check_views(views, self.spec)
        b, nv = views.shape[:2]
        s, n = self.spec.output_size, self.n
        skips, tops = [], []
        for v in range(nv):
            maps, vec = self.encoders[v](views[:, v:v + 1])
            skips.append([self.skip2d[v][lv](maps[lv]) for lv in range(n)])
            tops.append(self.links[v](vec).reshape(b, self.channels[n], *(self.bottom,) * 3))
        avg = torch.stack(tops).mean(0)  # level n: the FC volumes, fused
        fused = self.fusion[n](avg) if self.fuse else None
        for lv in range(n - 1, -1, -1):
            size = s // 2 ** lv
            acc = None
            for v in range(nv):  # one view at a time: bounded memory at full resolution
                x = self.branch[v][lv + 1](avg)  # the view's decoder from the fused level
                skip = self.skip3d[v][lv](self.lifter(skips[v][lv][:, None], size, v)[:, 0])
                x = self.compress[v][lv](torch.cat([x, skip], 1))
                del skip
                acc = x if acc is None else acc + x
            avg = acc / nv
            del acc, x
            if self.fuse:
                fused = self.fusion[lv](torch.cat([avg, fused], 1))
        return self.head(fused if self.fuse else self.last(avg))


class X2CTGeneratorSingle(X2CTGenerator):
    """The single-view variant (AP only by default): one branch, no fusion decoder. The same
    arguments as :class:`X2CTGenerator`; ``forward(views [B, 1, P, P]) -> [B, 1, S, S, S]``."""

    name = "x2ct_gan_single"
    default_views = ("ap",)


DEFAULTS: dict[str, Any] = {**layer_defaults(X2CTGenerator), **COMPACT_WIDTH}
"""The layer arguments and their defaults (the ``"compact"`` widths)."""

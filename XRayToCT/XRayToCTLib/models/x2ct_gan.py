"""The X2CT-GAN generator of seed 001 (Ying et al., CVPR 2019, as the seed used it), biplanar
(``x2ct_gan``) and single view (``x2ct_gan_single``).

Per view, a DenseNet 2D encoder (a 7x7 stem, then per stage a stride-2 convolution, a dense
block of MONAI's DenseNet layers, a 1x1 compression). Three connections bring 2D to 3D:

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
fits the 25 MB package limit and a CPU. Any width key can be set on its own.
The published code also gave each view branch its own full-resolution decoder and output
head, whose outputs no loss used; they are left out (about 0.1 M parameters at the seed width).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from monai.networks.nets.densenet import _DenseBlock

from .common import ModelSpec, ViewLifter, check_views, make_spec, output_activation, split_config

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

DEFAULTS: dict[str, Any] = {
    "preset": "compact",
    "presets": {"seed": SEED_WIDTH, "compact": COMPACT_WIDTH},
    **COMPACT_WIDTH,
    "bottleneck_dropout": 0.5,
    "lift": "perspective",
    "output_activation": "sigmoid",
}


def _conv3(cin: int, cout: int, k: int = 3) -> Convolution:
    return Convolution(3, cin, cout, kernel_size=k, act=ACT, norm=NORM)


def _up3(cin: int, cout: int) -> Convolution:
    return Convolution(3, cin, cout, strides=2, kernel_size=3, act=ACT, norm=NORM,
                       is_transposed=True, padding=1, output_padding=1)


class _Encoder2D(nn.Module):
    """DenseNet 2D encoder of one view; returns the skip maps (stem + every stage but the
    last, finest first) and the pooled bottleneck vector."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        c = int(cfg["stem_channels"])
        self.stem = nn.Sequential(nn.ReflectionPad2d(3), Convolution(
            2, 1, c, kernel_size=7, padding=0, act=ACT, norm=NORM))
        self.skip_channels = [c]
        self.stages = nn.ModuleList()
        nblocks = list(cfg["encoder_blocks"])
        for i, layers in enumerate(nblocks):
            mods: list[nn.Module] = [
                _PreAct(c, c, 3, stride=2),
                _DenseBlock(2, layers, c, int(cfg["bn_size"]), int(cfg["growth_rate"]), 0.0,
                            act=ACT, norm=NORM)]
            c = c + layers * int(cfg["growth_rate"])
            if i == len(nblocks) - 1:
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


class _PreAct(nn.Sequential):
    """Norm, ReLU, then a 2D convolution (DenseNet's pre-activation order)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
        super().__init__(nn.InstanceNorm2d(cin), nn.ReLU(inplace=True),
                         nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2))


class X2CTGenerator(nn.Module):
    """X2CT-GAN generator (see the module doc). ``forward(views [B, V, P, P])`` ->
    ``[B, 1, S, S, S]`` in the spec's intensity space, array order ``[z, y, x]``; views
    normalised with :func:`~XRayToCTLib.models.normalize_views`."""

    name = "x2ct_gan"
    defaults = DEFAULTS
    default_views = ("ap", "lateral")

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__()
        config = dict(config or {})
        config.setdefault("views", list(self.default_views))
        cfg = split_config(self.defaults, config, self.name)
        self.spec: ModelSpec = make_spec(self.name, cfg)
        p, s = self.spec.image_size, self.spec.output_size
        n = len(cfg["encoder_blocks"])
        dch, dbl, fbl = (list(cfg[k]) for k in ("decoder_channels", "decoder_blocks",
                                                "fusion_blocks"))
        if not (len(dch) == len(dbl) == len(fbl) == n + 1):
            raise ValueError(f"{self.name}: decoder_channels, decoder_blocks and fusion_blocks "
                             f"need {n + 1} entries (len(encoder_blocks) + 1)")
        if s % (2 ** n) or p % (2 ** n) or p // 2 ** n < 2:
            raise ValueError(f"{self.name}: image_size {p} and output_size {s} must be "
                             f"multiples of 2^{n} (len(encoder_blocks) = {n}), and image_size "
                             f">= 2^{n + 1}; use fewer encoder stages for small images")
        self.n = n
        self.bottom = s // 2 ** n
        self.channels = dch
        nv = len(self.spec.views)
        self.fuse = nv > 1
        self.lifter = ViewLifter(self.spec.projections(), s * self.spec.output_spacing,
                                 cfg["lift"])
        self.encoders = nn.ModuleList(_Encoder2D(cfg) for _ in range(nv))
        enc = self.encoders[0]
        # connection A
        self.links = nn.ModuleList(nn.Sequential(
            nn.Linear(enc.out_channels, self.bottom ** 3 * dch[n]),
            nn.Dropout(float(cfg["bottleneck_dropout"])), nn.ReLU(inplace=True))
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
        k = int(cfg["head_kernel"])
        self.head = nn.Sequential(nn.Conv3d(dch[0], 1, k, padding=k // 2),
                                  output_activation(cfg["output_activation"]))

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
    """The single-view variant (AP only by default): one branch, no fusion decoder."""

    name = "x2ct_gan_single"
    default_views = ("ap",)

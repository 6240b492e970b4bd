"""The conditional 3D PatchGAN discriminator of seed 001 (X2CT-GAN's ``basic3d``).

MONAI's :class:`~monai.networks.nets.PatchDiscriminator` with ``num_layers_d=3``: four
convolutional layers with kernel 4 and strides 2, 2, 2, 1 (64, 128, 256, 512 channels at the
seed width), instance norm after all but the first, LeakyReLU 0.2, then a 4x4x4 convolution
to one logit per patch (no sigmoid: use ``monai.losses.PatchAdversarialLoss(
criterion="least_squares")``).

It is conditioned on the input views: each view is put into the volume's grid along its
rays (:class:`~.common.ViewLifter`, the same lifting as the generator's skip connections)
and concatenated with the volume as channels, so ``in_channels = 1 + V``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from monai.networks.nets import PatchDiscriminator

from .common import ModelSpec, ViewLifter, check_views, make_spec

DISC_DEFAULTS: dict[str, Any] = {"disc_channels": 64, "disc_layers": 3, "disc_norm": "instance",
                                 "lift": "perspective"}


class ConditionalPatchDiscriminator(nn.Module):
    """``forward(volume [B, 1, S, S, S], views [B, V, P, P]) -> logits [B, 1, s, s, s]``
    (``s = S / 8 - 1`` with the defaults). ``features(volume, views)`` returns every layer's
    output (for feature-matching losses), the logits last."""

    def __init__(self, spec: ModelSpec, channels: int = 64, num_layers: int = 3,
                 norm: str = "instance", lift: str = "perspective"):
        super().__init__()
        if int(channels) < 1 or int(num_layers) < 1:
            raise ValueError(f"disc_channels and disc_layers must be >= 1, got {channels}, "
                             f"{num_layers}")
        self.spec = spec
        self.lifter = ViewLifter(spec.projections(), spec.output_size * spec.output_spacing,
                                 lift)
        self.net = PatchDiscriminator(spatial_dims=3, channels=int(channels),
                                      in_channels=1 + len(spec.views), out_channels=1,
                                      num_layers_d=int(num_layers), kernel_size=4,
                                      activation=("LEAKYRELU", {"negative_slope": 0.2}),
                                      norm=norm)

    def _input(self, volume: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        s = self.spec.output_size
        if volume.dim() != 5 or tuple(volume.shape[1:]) != (1, s, s, s):
            raise ValueError(f"discriminator expects a volume [B, 1, {s}, {s}, {s}], got "
                             f"{tuple(volume.shape)}")
        check_views(views, self.spec)
        cond = self.lifter(views[:, :, None].to(volume.dtype), s)[:, :, 0]  # [B, V, S, S, S]
        return torch.cat([volume, cond], dim=1)

    def features(self, volume: torch.Tensor, views: torch.Tensor) -> list[torch.Tensor]:
        return self.net(self._input(volume, views))

    def forward(self, volume: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        return self.features(volume, views)[-1]


def build_discriminator(config: dict[str, Any] | ModelSpec | None = None
                        ) -> ConditionalPatchDiscriminator:
    """The conditional 3D PatchGAN for a generator.

    ``config``: the generator's :class:`ModelSpec` or its config dict (``model.spec.config``
    works: the spec keys ``views``, ``image_size``, ``output_size``, ``output_spacing``,
    ``geometry`` are read, generator layer keys ignored), plus optional ``disc_channels``
    (64), ``disc_layers`` (3: the seed's 4 conv layers), ``disc_norm`` (``"instance"``),
    ``lift`` (``"perspective"``)."""
    if isinstance(config, ModelSpec):
        spec, cfg = config, dict(DISC_DEFAULTS)
        cfg.update({k: v for k, v in config.config.items() if k in DISC_DEFAULTS})
    else:
        config = dict(config or {})
        cfg = {k: config.get(k, v) for k, v in DISC_DEFAULTS.items()}
        spec_cfg = {k: config[k] for k in ("views", "image_size", "output_size",
                                           "output_spacing", "geometry", "intensity")
                    if k in config}
        spec = make_spec("discriminator", spec_cfg)
    return ConditionalPatchDiscriminator(spec, cfg["disc_channels"], cfg["disc_layers"],
                                         cfg["disc_norm"], cfg["lift"])

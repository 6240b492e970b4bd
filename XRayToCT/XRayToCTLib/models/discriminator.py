"""The conditional 3D PatchGAN discriminator of seed 001 (X2CT-GAN's ``basic3d``).

MONAI's :class:`~monai.networks.nets.PatchDiscriminator` with ``num_layers_d=3``: four
convolutional layers with kernel 4 and strides 2, 2, 2, 1 (64, 128, 256, 512 channels at the
seed width), instance norm after all but the first, LeakyReLU 0.2, then a 4x4x4 convolution
to one logit per patch (``S^3`` voxels give ``(S / 8 - 2)^3`` patches; no sigmoid: use
``monai.losses.PatchAdversarialLoss(criterion="least_squares")``).

It is conditioned on the input views: each view is put into the volume's grid along its
rays (:class:`~.common.ViewLifter`, the same lifting as the generator's skip connections)
and concatenated with the volume as channels, so ``in_channels = 1 + V``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from monai.networks.nets import PatchDiscriminator

from ..geometry import ProjectionGeometry
from .common import (LIFT_MODES, ModelSpec, ViewLifter, check_choice, check_int, check_views,
                     make_spec)

DISC_DEFAULTS: dict[str, Any] = {"disc_channels": 64, "disc_layers": 3, "disc_norm": "instance",
                                 "lift": "perspective"}
"""The discriminator's keys in a config dict (:func:`build_discriminator`) and their defaults."""

_ARGUMENTS = {"disc_channels": "channels", "disc_layers": "num_layers", "disc_norm": "norm",
              "lift": "lift"}  # config key -> constructor argument


class ConditionalPatchDiscriminator(nn.Module):
    """Conditional 3D PatchGAN (see the module doc).

    Args:
        views: names of the generator's input views, in its order (default AP and lateral).
        image_size: ``P``, the views are ``P x P`` pixels.
        output_size: ``S``, the volumes are ``S^3`` voxels (at least ``2^(num_layers + 2)``).
        output_spacing: voxel size in mm; default: the canonical field of view (256 mm) over
            ``S``.
        geometry: view name -> :class:`ProjectionGeometry` (or its ``to_dict()``), isocentre
            at the origin; default: the project's default biplanar geometry.
        channels: channels of the first layer (doubling per layer).
        num_layers: stride-2 layers after the first convolution (MONAI's ``num_layers_d``;
            the last is stride 1).
        norm: normalisation (a MONAI norm name, e.g. ``"instance"`` or ``"batch"``).
        lift: how the views are put into the volume's grid, ``"perspective"`` or
            ``"parallel"`` (:class:`~.common.ViewLifter`).

    ``forward(volume [B, 1, S, S, S], views [B, V, P, P]) -> logits [B, 1, s, s, s]``
    (``s = S / 2^num_layers - 2``: 2 for ``S = 32`` with the defaults). ``features(volume,
    views)`` returns every layer's output (for feature-matching losses), the logits last.
    """

    def __init__(self, *, views: Sequence[str] = ("ap", "lateral"), image_size: int = 128,
                 output_size: int = 128, output_spacing: float | None = None,
                 geometry: Mapping[str, ProjectionGeometry | Mapping[str, Any]] | None = None,
                 channels: int = 64, num_layers: int = 3, norm: str | tuple = "instance",
                 lift: str = "perspective") -> None:
        super().__init__()
        name = "discriminator"
        channels = check_int(name, "channels (disc_channels)", channels)
        num_layers = check_int(name, "num_layers (disc_layers)", num_layers)
        check_choice(name, "lift", lift, LIFT_MODES)
        if not isinstance(norm, (str, tuple)):
            raise ValueError(f"{name}: norm must be a MONAI norm name, got {norm!r}")
        self.spec: ModelSpec = make_spec(
            name, views=views, image_size=image_size, output_size=output_size,
            output_spacing=output_spacing, geometry=geometry, intensity="hu_compand",
            layers={"disc_channels": channels, "disc_layers": num_layers, "disc_norm": norm,
                    "lift": lift})
        patches = self.spec.output_size
        for _ in range(num_layers):  # kernel 4, padding 1: stride 2 halves (rounding down)
            patches //= 2
        if patches - 2 < 1:  # then two stride-1 layers take one voxel each
            raise ValueError(f"{name}: {num_layers} layers leave no patch of a "
                             f"{self.spec.output_size}^3 volume; use fewer layers")
        self.lifter = ViewLifter(self.spec.projections(), self.spec.field_mm, lift)
        self.net = PatchDiscriminator(spatial_dims=3, channels=channels,
                                      in_channels=1 + len(self.spec.views), out_channels=1,
                                      num_layers_d=num_layers, kernel_size=4,
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


def build_discriminator(config: Mapping[str, Any] | ModelSpec | None = None
                        ) -> ConditionalPatchDiscriminator:
    """The conditional 3D PatchGAN for a generator, from a config dict.

    ``config``: the generator's :class:`ModelSpec` or its config dict (``model.spec.config``
    works: the spec keys ``views``, ``image_size``, ``output_size``, ``output_spacing``,
    ``geometry`` are read, the generator's other keys ignored), plus optional
    ``disc_channels`` (64), ``disc_layers`` (3: the seed's 4 conv layers), ``disc_norm``
    (``"instance"``), ``lift`` (``"perspective"``): :data:`DISC_DEFAULTS`, the arguments
    ``channels``, ``num_layers``, ``norm`` and ``lift`` of
    :class:`ConditionalPatchDiscriminator`."""
    if isinstance(config, ModelSpec):
        spec = config
        config = {**spec.config, "views": list(spec.views), "image_size": spec.image_size,
                  "output_size": spec.output_size, "output_spacing": spec.output_spacing,
                  "geometry": spec.geometry}
    elif config is not None and not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict or a ModelSpec, got {type(config).__name__}")
    config = dict(config or {})
    kwargs = {k: config[k] for k in ("views", "image_size", "output_size", "output_spacing",
                                     "geometry") if k in config}
    kwargs.update({arg: config.get(key, DISC_DEFAULTS[key]) for key, arg in _ARGUMENTS.items()})
    return ConditionalPatchDiscriminator(**kwargs)

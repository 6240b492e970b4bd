"""Pix2Pix (seed 003; Isola, Zhu, Zhou, Efros, CVPR 2017): 2D paired image translation.

Seed 003 translates T1C MR slices into PET/MR fusion slices with "the Pix2Pix algorithm of
CGAN" and scores them with PSNR, SSIM and FSIM; it gives no other settings, so the
architecture and the losses are those of the Pix2Pix paper:

* **generator**: a U-Net (encoder-decoder with skip connections between mirrored levels),
  here MONAI's :class:`~monai.networks.nets.UNet` in 2D: stride-2 convolutions down,
  transposed convolutions up, instance norm (Pix2Pix's batch norm at batch size 1),
  LeakyReLU 0.2, dropout in the up path as an option; its output goes through a sigmoid,
  the [0, 1] of the normalised images (Pix2Pix: tanh on [-1, 1], the same up to scale);
* **discriminator**: the 70 x 70 PatchGAN, conditioned on the input image (input and output
  stacked as channels): MONAI's :class:`~monai.networks.nets.PatchDiscriminator` in 2D with
  kernel 4, strides 2, 2, 2, 1, channels 64-128-256-512, instance norm after the first
  layer, LeakyReLU 0.2, one logit per patch (:class:`Pix2PixDiscriminator`);
* **losses** (:mod:`XRayToCTLib.training.translation`): the conditional GAN loss
  (binary cross-entropy on the patch logits, the paper's vanilla GAN) plus ``lambda`` L1
  with ``lambda = 100``; Adam, lr 2e-4, betas (0.5, 0.999), batch size 1.

In this project it **harmonises** radiographs: a simulated or real radiograph (input
domain) is translated into the DRR domain (target) the reconstruction models were trained
on. It is a 2D model: its spec (:class:`TranslationSpec`) says so (``kind =
"translation_2d"``), and the reconstruction code refuses it. Images enter and leave it
normalised by :func:`~XRayToCTLib.drr.normalize_views` (percentiles to [0, 1]).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
import torch.nn as nn
from monai.networks.nets import PatchDiscriminator, UNet

from ..drr import NORMALIZE_HIGH_Q, NORMALIZE_LOW_Q
from .common import check_choice, check_float, check_int, check_ints

__all__ = ["TRANSLATION_KIND", "TranslationSpec", "Pix2PixGenerator", "Pix2PixDiscriminator",
           "build_pix2pix_discriminator", "PIX2PIX_DISC_DEFAULTS", "is_translation"]

TRANSLATION_KIND = "translation_2d"
"""The ``kind`` of a 2D image-to-image model (reconstruction models have none, or
``"reconstruction"``)."""

NORMALIZATION = (f"normalize_views: (x - q{NORMALIZE_LOW_Q:g}) / (q{NORMALIZE_HIGH_Q:g} - "
                 f"q{NORMALIZE_LOW_Q:g}) of each image, clipped to [0, 1]")
"""How a translation model's input and target images are scaled (the reconstruction models'
input convention)."""


def is_translation(model_or_spec: Any) -> bool:
    """Whether a model (or its spec, or a package's ``spec`` dict) is a 2D translation model."""
    spec = getattr(model_or_spec, "spec", model_or_spec)
    kind = spec.get("kind") if isinstance(spec, Mapping) else getattr(spec, "kind", None)
    return kind == TRANSLATION_KIND


@dataclasses.dataclass
class TranslationSpec:
    """A 2D translation model's contract (JSON-friendly via :meth:`to_dict`).

    Args:
        name: registry name (``"pix2pix"``).
        image_size: ``P``: images are ``P x P`` pixels (the model is fully convolutional, but
            it is trained, and applied, at this size).
        input_domain: what the input images are (e.g. ``"simulated radiograph"``).
        target_domain: what the outputs are (e.g. ``"drr"``).
        in_channels, out_channels: image channels (1: grey).
        normalization: how input and target images are scaled (:data:`NORMALIZATION`).
        config: the full config (``build_model(name, config)`` rebuilds it).
    """

    name: str
    image_size: int
    input_domain: str
    target_domain: str
    in_channels: int = 1
    out_channels: int = 1
    normalization: str = NORMALIZATION
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    kind: str = TRANSLATION_KIND

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TranslationSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def package_header(self) -> dict[str, Any]:
        """The package header's ``input``/``output`` records of this model (the reconstruction
        models' say views, grid and intensity mapping instead)."""
        layout = f"[B, {self.in_channels}, {self.image_size}, {self.image_size}]"
        return {"kind": self.kind,
                "input": {"domain": self.input_domain, "image_size": self.image_size,
                          "channels": self.in_channels, "layout": layout,
                          "convention": "bone bright; " + self.normalization},
                "output": {"domain": self.target_domain, "image_size": self.image_size,
                           "channels": self.out_channels,
                           "layout": f"[B, {self.out_channels}, {self.image_size}, "
                                     f"{self.image_size}]",
                           "intensity": f"[0, 1] (sigmoid), the target domain's images scaled "
                                        f"as the input: {self.normalization}"}}


def _check_norm(owner: str, norm: Any) -> str | tuple:
    if not isinstance(norm, (str, tuple, list)):
        raise ValueError(f"{owner}: norm must be a MONAI norm name, got {norm!r}")
    return tuple(norm) if isinstance(norm, list) else norm


class Pix2PixGenerator(nn.Module):
    """The Pix2Pix U-Net generator (see the module doc).

    Args:
        image_size: ``P``; must be divisible by ``2^len(strides)``.
        in_channels, out_channels: image channels.
        channels: features per level (Pix2Pix: 64, 128, 256, 512, 512, ...; the default is a
            quarter-width CPU version).
        strides: the down-sampling stride between levels (``len(channels) - 1`` entries).
        num_res_units: residual units per level (0: Pix2Pix's plain convolutions).
        norm: MONAI norm name (``"instance"``; ``"batch"`` as in the paper).
        dropout: dropout probability in every block (Pix2Pix: 0.5 in the first decoder
            levels, at training and test time; 0 here: the output is deterministic).
        input_domain, target_domain: what the images are (recorded in the spec).

    ``forward(x [B, in, P, P]) -> [B, out, P, P]`` in [0, 1].
    """

    kind = TRANSLATION_KIND

    def __init__(self, *, image_size: int = 64, in_channels: int = 1, out_channels: int = 1,
                 channels: tuple | list = (32, 64, 128, 256), strides: tuple | list = (2, 2, 2),
                 num_res_units: int = 0, norm: str | tuple = "instance", dropout: float = 0.0,
                 input_domain: str = "simulated radiograph", target_domain: str = "drr") -> None:
        super().__init__()
        name = "pix2pix"
        image_size = check_int(name, "image_size", image_size, 4)
        in_channels = check_int(name, "in_channels", in_channels)
        out_channels = check_int(name, "out_channels", out_channels)
        channels = check_ints(name, "channels", channels, 1, 2)
        strides = check_ints(name, "strides", strides, 1, 1)
        if len(strides) != len(channels) - 1:
            raise ValueError(f"{name}: strides needs len(channels) - 1 = {len(channels) - 1} "
                             f"entries, got {len(strides)}")
        factor = 1
        for s in strides:
            factor *= s
        if image_size % factor:
            raise ValueError(f"{name}: image_size {image_size} must be divisible by the "
                             f"product of the strides ({factor})")
        num_res_units = check_int(name, "num_res_units", num_res_units, 0)
        norm = _check_norm(name, norm)
        dropout = check_float(name, "dropout", dropout, 0.0, 1.0, high_open=True)
        for key, value in (("input_domain", input_domain), ("target_domain", target_domain)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name}: {key} must be a non-empty text, got {value!r}")
        config = {"image_size": image_size, "in_channels": in_channels,
                  "out_channels": out_channels, "channels": channels, "strides": strides,
                  "num_res_units": num_res_units,
                  "norm": list(norm) if isinstance(norm, tuple) else norm, "dropout": dropout,
                  "input_domain": input_domain, "target_domain": target_domain}
        self.spec = TranslationSpec(name, image_size, input_domain, target_domain, in_channels,
                                    out_channels, NORMALIZATION, config)
        self.net = UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
                        channels=channels, strides=strides, kernel_size=3,
                        up_kernel_size=3, num_res_units=num_res_units,
                        act=("LEAKYRELU", {"negative_slope": 0.2}), norm=norm, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, c = self.spec.image_size, self.spec.in_channels
        if x.dim() != 4 or x.shape[1] != c:
            raise ValueError(f"pix2pix expects images [B, {c}, H, W], got {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != (p, p):
            raise ValueError(f"pix2pix was built for {p} x {p} images, got "
                             f"{tuple(x.shape[-2:])}")
        return torch.sigmoid(self.net(x))


PIX2PIX_DISC_DEFAULTS: dict[str, Any] = {"disc_channels": 64, "disc_layers": 3,
                                         "disc_norm": "instance", "gan_loss": "bce"}
"""The discriminator's keys in a training run's ``discriminator_config`` and their defaults
(``gan_loss``: ``"bce"``, the Pix2Pix paper's vanilla GAN, or ``"least_squares"``)."""


class Pix2PixDiscriminator(nn.Module):
    """The conditional 2D PatchGAN of Pix2Pix (70 x 70 receptive field at the defaults).

    Args:
        image_size: ``P`` (at least ``2^(num_layers + 2)``).
        in_channels, out_channels: the generator's (the discriminator sees both, stacked).
        channels: channels of the first layer (doubling per layer).
        num_layers: stride-2 layers after the first convolution (MONAI's ``num_layers_d``).
        norm: MONAI norm name.

    ``forward(image [B, out, P, P], condition [B, in, P, P]) -> logits [B, 1, s, s]`` with
    ``s = P / 2^num_layers - 2`` (6 for ``P = 64``); ``features`` returns every layer's output.
    """

    def __init__(self, *, image_size: int = 64, in_channels: int = 1, out_channels: int = 1,
                 channels: int = 64, num_layers: int = 3, norm: str | tuple = "instance") -> None:
        super().__init__()
        name = "pix2pix discriminator"
        image_size = check_int(name, "image_size", image_size, 4)
        channels = check_int(name, "channels (disc_channels)", channels)
        num_layers = check_int(name, "num_layers (disc_layers)", num_layers)
        norm = _check_norm(name, norm)
        if image_size // 2 ** num_layers - 2 < 1:
            raise ValueError(f"{name}: {num_layers} layers leave no patch of a {image_size}^2 "
                             f"image; use fewer layers")
        self.image_size = image_size
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.net = PatchDiscriminator(spatial_dims=2, channels=channels,
                                      in_channels=self.in_channels + self.out_channels,
                                      out_channels=1, num_layers_d=num_layers, kernel_size=4,
                                      activation=("LEAKYRELU", {"negative_slope": 0.2}),
                                      norm=norm)

    def features(self, image: torch.Tensor, condition: torch.Tensor) -> list[torch.Tensor]:
        if image.dim() != 4 or condition.shape[0] != image.shape[0] \
                or condition.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"discriminator expects matching images [B, C, H, W], got "
                             f"{tuple(image.shape)} and {tuple(condition.shape)}")
        return self.net(torch.cat([image, condition.to(image.dtype)], dim=1))

    def forward(self, image: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.features(image, condition)[-1]


def build_pix2pix_discriminator(generator_spec: TranslationSpec,
                                config: Mapping[str, Any] | None = None) -> Pix2PixDiscriminator:
    """The PatchGAN for a generator: its image size and channels, and ``config``'s
    ``disc_channels``, ``disc_layers``, ``disc_norm`` (:data:`PIX2PIX_DISC_DEFAULTS`;
    ``gan_loss`` is the training's); an unknown key is a ValueError."""
    config = dict(config or {})
    unknown = sorted(set(config) - set(PIX2PIX_DISC_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown discriminator_config key(s) {unknown}; valid: "
                         f"{sorted(PIX2PIX_DISC_DEFAULTS)}")
    c = {**PIX2PIX_DISC_DEFAULTS, **config}
    check_choice("pix2pix discriminator", "gan_loss", c["gan_loss"], ("bce", "least_squares"))
    return Pix2PixDiscriminator(image_size=generator_spec.image_size,
                                in_channels=generator_spec.in_channels,
                                out_channels=generator_spec.out_channels,
                                channels=c["disc_channels"], num_layers=c["disc_layers"],
                                norm=c["disc_norm"])

"""The generator's and the discriminator's losses, one piece each.

Seed 001: "a least-squares conditional GAN formulation; the total objective combines
adversarial, reconstruction and projection-consistency losses"; the weights are
X2CT-GAN's, as quoted by seed 004: ``G = argmin(λ1 L_G + λ2 L_rec + λ2 L_pl)`` with
``λ1 = 0.1`` and ``λ2 = 10`` (the seeds are the papers in ``../shared/seeds/``).

* :class:`ReconstructionLoss`: L1 between prediction and target in the model's intensity
  space (``models.intensity``), weight ``lambda_rec`` (10). For ``cnn_inr`` the default is
  the mean squared error, as seed 001 trains its CNN–INR ("minimizing the voxel-wise mean
  squared error"), by default on the **full output grid** (the grid holds the same points,
  and the projection loss needs the whole grid rendered anyway), or, with
  ``points_per_step``, on random points (:func:`sample_points`) as seed 001 did.
* :class:`ProjectionLoss` (projection consistency), weight ``lambda_proj`` (10): the
  prediction is mapped back to HU (the mapping's ``to_hu``) and rendered by the one DRR
  chain, :class:`~XRayToCTLib.drr.DRR`, **at the dataset's own DRR geometry** (a real
  cone-beam line integral, not a mean along an axis) with its *soft* attenuation (the line
  ``0.022 (1 + HU/1000)`` times ``sigmoid((HU + 800) / proj_gate_hu)``, 10 HU by default:
  the hard -800 HU air threshold of the plain conversion has no gradient), normalised like
  the network's inputs, and compared (L1) with the normalised input DRRs. With the
  ``brain`` intensity mapping, which cannot give HU outside its 20–60 HU window, the
  reference is instead the ground truth passed through the same mapping and rendered the
  same way (``projection_reference``).
* :class:`AdversarialLoss`: least squares (LSGAN), ``monai.losses.PatchAdversarialLoss(
  criterion="least_squares")`` on the patch logits of the conditional 3D PatchGAN
  (``models.build_discriminator``), weight ``lambda_adv`` (0.1). The discriminator's loss
  is ``0.5 (LSGAN(D(real), 1) + LSGAN(D(fake), 0))``, conditioned on the input views.
  ``cnn_inr`` has no adversarial term by default (seed 001 trains it without).
* :class:`PerceptualLoss` (seed 004's perceptual term), weight ``lambda_perc`` (1 for
  ``sxr2ct``, 0 for the others): L1 between the features of a frozen network trained in this
  project (``perceptual_model``, the bundled ``cnn_inr_phantom64``'s 2D encoders) on the AP
  and lateral DRRs of prediction and ground truth (no pretrained weights can be downloaded).

Every loss is computed in float32; the networks may run under autocast (``autocast``
arguments), the DRR projection never does.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss
from torch import nn

from ..drr import DRR
from ..geometry import Grid

__all__ = ["ReconstructionLoss", "ProjectionLoss", "AdversarialLoss", "PerceptualLoss",
           "sample_points", "last_logits"]

Autocast = Callable[[], ContextManager]


class ReconstructionLoss(nn.Module):
    """``"l1"`` or ``"mse"`` between a prediction and its target (any equal shapes)."""

    def __init__(self, kind: str = "l1"):
        super().__init__()
        if kind not in ("l1", "mse"):
            raise ValueError(f"reconstruction loss must be l1 or mse, got {kind!r}")
        self.kind = kind
        self._fn = F.l1_loss if kind == "l1" else F.mse_loss

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._fn(pred.float(), target.float())


def sample_points(target: torch.Tensor, grid: Grid, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uniform random points per case inside ``grid`` (between the outer voxel
    centres): their LPS positions ``[B, n, 3]`` (mm, from :meth:`Grid.index_to_lps`) and the
    trilinear values ``[B, n]`` of ``target`` ``[B, 1, D, H, W]`` (array order ``[k, j, i]``
    on ``grid``) there."""
    b = target.shape[0]
    size = torch.tensor(grid.size, dtype=torch.float32, device=target.device)  # (i, j, k)
    idx = torch.rand(b, n, 3, device=target.device) * (size - 1)
    m = torch.as_tensor(grid.index_to_lps(), dtype=torch.float32, device=target.device)
    pts = idx @ m[:3, :3].T + m[:3, 3]
    coords = (idx / (size - 1) * 2.0 - 1.0).reshape(b, 1, 1, n, 3)  # x=i, y=j, z=k
    values = F.grid_sample(target, coords, mode="bilinear", align_corners=True)
    return pts, values.reshape(b, n)


class ProjectionLoss(nn.Module):
    """L1 between the normalised DRRs of a prediction and a reference (see the module doc).

    Args:
        drr: the run's one :class:`~XRayToCTLib.drr.DRR` (the dataset's geometries, the
            output grid, soft attenuation); ``drr.normalized(hu)`` renders ``[B, 1, D, H, W]``
            HU to normalised views ``[B, V, P, P]``.
        mapping: the model's intensity mapping (``to_hu``).
        reference: ``"input"`` (the normalised input views) or ``"target"`` (the ground
            truth in model intensity, rendered the same way).
    """

    def __init__(self, drr: DRR, mapping: Any, reference: str = "input"):
        super().__init__()
        if reference not in ("input", "target"):
            raise ValueError(f"projection reference must be input or target, got {reference!r}")
        self.drr = drr
        self.mapping = mapping
        self.reference = reference

    def project(self, x_model: torch.Tensor) -> torch.Tensor:
        """Normalised DRRs ``[B, V, P, P]`` of volumes in model intensity (float32)."""
        return self.drr.normalized(self.mapping.to_hu(x_model.float()))

    def render_reference(self, target: torch.Tensor) -> torch.Tensor:
        """The ``"target"`` reference: the normalised DRRs ``[B, V, P, P]`` of ``target`` (model
        intensity), without gradients (the training renders each case's once and keeps it)."""
        with torch.no_grad(), torch.autocast(target.device.type, enabled=False):
            return self.project(target)

    def forward(self, pred: torch.Tensor, views: torch.Tensor | None = None,
                target: torch.Tensor | None = None, *,
                reference: torch.Tensor | None = None) -> torch.Tensor:
        """``pred`` and ``target`` in model intensity, ``views`` the normalised inputs (only
        the reference needs to be given); or the ``reference`` views themselves (what
        ``views`` or :meth:`render_reference` would give)."""
        with torch.autocast(pred.device.type, enabled=False):
            if reference is not None:
                ref = reference
            elif self.reference == "input":
                ref = views
            else:
                ref = self.render_reference(target)
            return F.l1_loss(self.project(pred), ref)


def last_logits(out: Any) -> torch.Tensor:
    """MONAI's PatchDiscriminator returns every layer's output; the logits are the last."""
    return out[-1] if isinstance(out, (list, tuple)) else out


class AdversarialLoss(nn.Module):
    """Least-squares (LSGAN) losses of a conditional patch discriminator
    ``disc(volume, views) -> logits``; ``criterion="bce"``: the vanilla GAN's binary
    cross-entropy on the logits (Pix2Pix)."""

    def __init__(self, criterion: str = "least_squares"):
        super().__init__()
        self.criterion = PatchAdversarialLoss(criterion=criterion)

    def discriminator_loss(self, disc: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                           views: torch.Tensor,
                           autocast: Autocast = contextlib.nullcontext) -> torch.Tensor:
        """``0.5 (LSGAN(D(real), 1) + LSGAN(D(fake), 0))``: real and (detached) fake volumes
        in one batch, each conditioned on ``views``."""
        with autocast():
            logits = last_logits(disc(torch.cat([real, fake.detach()]),
                                      torch.cat([views, views]))).float()
        real_logits, fake_logits = logits.chunk(2)
        return 0.5 * (self.criterion(real_logits, target_is_real=True, for_discriminator=True)
                      + self.criterion(fake_logits, target_is_real=False, for_discriminator=True))

    def generator_loss(self, disc: nn.Module, fake: torch.Tensor, views: torch.Tensor,
                       autocast: Autocast = contextlib.nullcontext) -> torch.Tensor:
        """``LSGAN(D(fake), 1)``: the generator's term (gradients reach ``fake``)."""
        with autocast():
            logits = last_logits(disc(fake, views)).float()
        return self.criterion(logits, target_is_real=True, for_discriminator=False)


class PerceptualLoss(nn.Module):
    """A perceptual term without downloaded weights (seed 004's ``L_p``): L1 between the
    features of a frozen network trained in this project on the normalised DRRs of the
    prediction and of the ground truth.

    The network is a CNN-INR package's 2D encoders (``model.encode``: per view, every scale's
    map through the MLP's first layer, summed at the input's size, ``[B, hidden, P, P]``;
    the bundled ``cnn_inr_phantom64`` by default), frozen and in eval mode. Its views that
    ``drr`` renders (the run's DRR chain at the dataset's geometry, soft attenuation) are
    compared: for a single-view model the unseen view(s) too (the lateral view of an AP
    model), which the projection loss cannot constrain.

    Args:
        encoder: the feature network (an ``nn.Module`` with ``encode(views, view_names)``).
        view_names: the views it encodes, in ``drr``'s order.
        drr: a :class:`~XRayToCTLib.drr.DRR` of those views on the output grid.
        mapping: the generator's intensity mapping (``to_hu``).
    """

    def __init__(self, encoder: nn.Module, view_names: list[str], drr: DRR, mapping: Any):
        super().__init__()
        if not hasattr(encoder, "encode"):
            raise ValueError("the perceptual network needs an encode(views, view_names) method "
                             "(a cnn_inr package)")
        self.encoder = encoder.eval().requires_grad_(False)
        self.view_names = list(view_names)
        self.drr = drr
        self.mapping = mapping

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.encoder.eval()  # frozen: its norms keep their inference behaviour
        return self

    def render(self, x_model: torch.Tensor) -> torch.Tensor:
        """Normalised DRRs ``[B, V, P, P]`` of volumes in model intensity (float32)."""
        return self.drr.normalized(self.mapping.to_hu(x_model.float()))

    def features(self, views: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder.encode(views, self.view_names)

    def reference(self, target: torch.Tensor) -> list[torch.Tensor]:
        """The ground truth's features (no gradients)."""
        with torch.no_grad(), torch.autocast(target.device.type, enabled=False):
            return [f.detach() for f in self.features(self.render(target))]

    def forward(self, pred: torch.Tensor, reference: list[torch.Tensor]) -> torch.Tensor:
        with torch.autocast(pred.device.type, enabled=False):
            feats = self.features(self.render(pred))
            return sum(F.l1_loss(f, r) for f, r in zip(feats, reference)) / len(feats)

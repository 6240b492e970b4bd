"""The model zoo: every sCT model behind one registry.

* :data:`MODELS`: name -> class (``x2ct_gan``, ``x2ct_gan_single``, ``cnn_inr``,
  ``sxr2ct``); each
  class takes typed keyword arguments (the spec's ``views``, ``image_size``,
  ``output_size``, ``output_spacing``, ``geometry``, ``intensity``, then its own layers);
* :func:`build_model` ``(name, config) -> nn.Module`` maps a config dict onto those
  arguments; the module's ``.spec`` (:class:`ModelSpec`) holds them all;
  ``model(views [B, V, P, P]) -> [B, 1, S, S, S]`` in the spec's intensity space, array
  order ``[z, y, x]`` on the canonical grid (``S^3`` voxels of ``output_spacing`` mm
  centred on the LPS origin, identity direction), views normalised with
  :func:`normalize_views`;
* :func:`build_discriminator` ``(config) -> nn.Module``: ``(volume, views) -> patch logits``
  (:class:`ConditionalPatchDiscriminator`);
* :mod:`.intensity`: ``get_mapping("brain" | "hu_compand")`` with ``to_model`` / ``to_hu``;
* packages (one ``.safetensors`` file per trained model) and the bundled catalog:
  :func:`save_package`, :func:`load_package`, :func:`load_model`, :func:`catalog`,
  :func:`resolve_model`.

* ``pix2pix`` (:mod:`.pix2pix`) is registered too but is not an sCT model: a 2D translation
  model (a harmoniser, spec ``kind = "translation_2d"``: ``[B, 1, P, P] -> [B, 1, P, P]``),
  listed in the catalog with that ``kind`` (``catalog(kind=...)``) and refused by the
  reconstruction code.

Models never import training, inference or the CLI.
"""
from __future__ import annotations

from ..drr import normalize_views
from . import intensity
from .cnn_inr import CNNINR
from .common import ModelSpec, project_points_torch
from .discriminator import ConditionalPatchDiscriminator, build_discriminator
from .intensity import get_mapping
from .package import (CATALOG_PATH, catalog, load_model, load_package, resolve_model,
                      save_package)
from .registry import MODELS, build_model
from .sxr2ct import SXR2CT
from .x2ct_gan import X2CTGenerator, X2CTGeneratorSingle

__all__ = ["MODELS", "ModelSpec", "build_model", "build_discriminator", "normalize_views",
           "intensity", "get_mapping", "save_package", "load_package", "load_model",
           "catalog", "resolve_model", "CATALOG_PATH", "X2CTGenerator", "X2CTGeneratorSingle",
           "CNNINR", "SXR2CT", "ConditionalPatchDiscriminator", "project_points_torch"]

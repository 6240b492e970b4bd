"""The phantom's tissues: their HU ranges, label codes and the groups painting respects."""
from __future__ import annotations

from ..constants import AIR_HU

TISSUE_HU: dict[str, tuple[float, float]] = {
    # name: (lo, hi) HU. Each phantom draws one value per tissue uniformly in its range; the
    # voxels of a tissue scatter around it by the scanner noise (and, for bone, its texture).
    "air": (AIR_HU, AIR_HU),
    "fat": (-110.0, -80.0),
    "skin": (20.0, 60.0),
    "muscle": (40.0, 60.0),
    "cortical_bone": (1300.0, 1900.0),
    "diploe": (450.0, 800.0),
    "petrous_bone": (1800.0, 2300.0),
    "cancellous_bone": (200.0, 400.0),      # vertebral bodies, mandible core
    "teeth": (2000.0, 2800.0),
    "suture": (80.0, 300.0),
    "grey_matter": (33.0, 42.0),
    "white_matter": (23.0, 31.0),
    "deep_grey_matter": (32.0, 40.0),       # caudate, lentiform nuclei, thalami
    "brain_stem": (28.0, 36.0),
    "csf": (0.0, 12.0),
    "dura": (45.0, 70.0),                   # falx, tentorium
    "calcification": (150.0, 400.0),        # choroid plexus, pineal
    "globe": (8.0, 22.0),                   # vitreous
    "lens": (100.0, 130.0),
    "optic_nerve": (25.0, 40.0),
    "mucosa": (20.0, 45.0),                 # turbinates, sinus lining
    "hemorrhage": (55.0, 85.0),             # acute blood
    "edema": (12.0, 22.0),
    "shunt_plastic": (250.0, 600.0),        # barium-impregnated silicone
    "shunt_metal": (2500.0, 3071.0),
    "holder": (150.0, 400.0),               # carbon-fibre head holder
    "foam": (-950.0, -850.0),
    "table": (100.0, 300.0),
}
"""HU range of every tissue (one value per phantom is drawn uniformly in it)."""

LABELS: dict[str, int] = {name: code for code, name in enumerate(TISSUE_HU)}
"""Label codes of the map returned by ``head_phantom(..., return_labels=True)``."""

BRAIN: tuple[str, ...] = ("grey_matter", "white_matter", "deep_grey_matter", "brain_stem", "csf",
                          "dura", "calcification")
"""The intracranial tissues (deep structures and findings are painted over these only)."""

BONE: tuple[str, ...] = ("cortical_bone", "diploe", "petrous_bone", "suture", "cancellous_bone")
"""The bony tissues."""

SOFT: tuple[str, ...] = ("skin", "fat", "muscle", "mucosa")
"""The extracranial soft tissues."""

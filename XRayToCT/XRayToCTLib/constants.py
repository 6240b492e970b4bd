"""Named constants shared by the whole library (the ground layer: imports nothing).

Every number or text that more than one module needs lives here once; modules import it
rather than writing the literal again.
"""
from __future__ import annotations

AIR_HU = -1000.0
"""Hounsfield value of air; the fill value of every resampling outside a CT."""

HEAD_THRESHOLD_HU = -500.0
"""A voxel above this (HU) belongs to the head (or to anything else that is not air)."""

HU_CLIP = (-1000.0, 1000.0)
"""The seed-001 intensity clip, HU."""

FIELD_OF_VIEW_MM = 256.0
"""Side of the cubic canonical field of view (the seed protocol's 256 voxels at 1 mm)."""

MU_WATER_PER_MM = 0.022
"""Linear attenuation of water per mm (Plastimatch's HU -> attenuation line)."""

DRR_AIR_THRESHOLD_HU = -800.0
"""At or below this HU a voxel does not attenuate in a DRR (Plastimatch's convention)."""

OUTLINE_BASELINE_HU = 26.0
"""The constant (HU) of the evaluation's ``outline`` baseline when no dataset gives one: the
median HU inside the head outline (:func:`XRayToCTLib.hu.head_mask`) of a real adult head CT,
the InVesalius sample head 0051 (Siemens, vertex to C1; ``head_ct/invesalius_0051`` of the
project's shared data): 26.2 HU. Its mean there, 159 HU (145 HU clipped to +-1000), is pulled
up by the skull; the median is soft tissue and the constant with the least absolute error."""

SYNTHETIC_LABEL = "SYNTHETIC CT (sCT) - not for diagnosis"
"""The one label every synthetic CT carries: metadata ``description``, file headers, Slicer
node descriptions, DICOM series descriptions, JSON sidecars and reports (ASCII, so that
every header format can hold it)."""

SYNTHETIC_NOTE = ("computed by XRayToCT from radiographs: not a measurement of the patient; "
                  "research use only, not for diagnosis or treatment")
"""The longer explanation that goes with :data:`SYNTHETIC_LABEL` where there is room."""

TEMPLATE_ENV = "XRAYTOCT_TEMPLATE"
"""Environment variable naming a head CT template file to use instead of the shipped one."""

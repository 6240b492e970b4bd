"""XRayToCTLib: the Qt-free core of the XRayToCT Slicer extension.

Synthetic CT (sCT) of the head from two radiographs (AP + lateral) or one. Every sCT this
library writes is labelled synthetic. Modules, one per concern:

* :mod:`geometry`   -- Volume, Radiograph, ProjectionGeometry; the LPS<->RAS conversion
* :mod:`io`         -- reading and writing CTs and radiographs with exact geometry
* :mod:`preprocess` -- the seed-001 protocol (template registration, 1 mm, clip, 256^3, windows)
* :mod:`drr`        -- differentiable cone-beam DRRs (PyTorch) and a Plastimatch backend
* :mod:`phantom`    -- a synthetic head CT for demos and tests
* :mod:`cli`        -- the ``xraytoct`` command
"""
__version__ = "0.1.0"

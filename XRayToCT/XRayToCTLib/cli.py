"""The ``xraytoct`` command. ``XRayToCTTraining.py`` runs the same parser inside Slicer.

Exit status: 0 success; 2 bad input or usage (one line ``error: ...`` on stderr, no
traceback); 1 an internal failure (set ``XRAYTOCT_DEBUG=1`` for the traceback).

The library's errors describe the problem; this face adds the hint in its own terms (the
options to pass). The heavy modules (torch, SimpleITK, the models) are imported inside the
subcommands on purpose, so that ``--help`` and argument mistakes answer at once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from .constants import TEMPLATE_ENV
from .errors import (AmbiguousSeries, InputError, NotHounsfield, TemplateUnavailable,
                     XRayToCTError)
from .progress import ProgressCallback

PROG = "xraytoct"

_HINTS = {
    TemplateUnavailable: f"pass --template FILE, set {TEMPLATE_ENV}, or pass --no-register",
    NotHounsfield: "pass --rescale SLOPE INTERCEPT, e.g. --rescale 1 -1024 for values stored "
                   "as HU+1024",
    AmbiguousSeries: "choose one with --series UID",
}
"""This face's words for the library errors whose remedy is an option of the command line."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error, as every bad input gets."""

    def error(self, message: str):  # noqa: D401 (argparse API)
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def _add_rescale(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rescale", nargs=2, type=float, metavar=("SLOPE", "INTERCEPT"),
                   help="map stored values to HU as SLOPE*value+INTERCEPT, for CTs whose "
                        "header does not say (e.g. --rescale 1 -1024)")
    p.add_argument("--series", metavar="UID",
                   help="SeriesInstanceUID to read when a DICOM folder holds several series")


def _add_geometry(p: argparse.ArgumentParser) -> None:
    from .geometry import DEFAULT_DETECTOR_MM, DEFAULT_PIXELS, DEFAULT_SAD, DEFAULT_SID
    g = p.add_argument_group("DRR geometry (LPS mm; defaults: the project's fixed geometry)")
    g.add_argument("--sad", type=float, default=DEFAULT_SAD,
                   help="source-to-axis (isocentre) distance in mm (default %(default)g)")
    g.add_argument("--sid", type=float, default=DEFAULT_SID,
                   help="source-to-image (detector) distance in mm (default %(default)g)")
    g.add_argument("--detector-size", type=float, default=DEFAULT_DETECTOR_MM, metavar="MM",
                   help="side of the square detector in mm (default %(default)g)")
    g.add_argument("--pixels", type=int, default=DEFAULT_PIXELS,
                   help="detector pixels per side (default %(default)d)")
    g.add_argument("--isocenter", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="LPS point the central rays pass through (default: the CT's centre)")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to compute: auto = the GPU when there is one (default)")


def build_parser() -> argparse.ArgumentParser:
    """The one argument parser of ``xraytoct`` and of ``XRayToCTTraining.py``."""
    from . import __version__
    parser = _Parser(prog=PROG, description="XRayToCT: synthetic head CT (sCT) from "
                     "radiographs. Every sCT it makes is synthetic: not for diagnosis.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("convert", help="convert a CT or radiograph to NIfTI, NRRD, MHA or DICOM",
                       description="Convert a CT (NIfTI, NRRD, MHA, DICOM folder) or a radiograph "
                       "(DICOM, PNG/TIFF/JPEG, 2D NRRD/NIfTI) to NIfTI/NRRD/MHA (by OUT's "
                       "extension) or to a DICOM series (OUT a folder: a CT only). Geometry "
                       "(spacing, origin, direction) is kept exactly.")
    p.add_argument("input", metavar="IN", help="input file or DICOM folder")
    p.add_argument("output", metavar="OUT", help="output file (.nii.gz, .nii, .nrrd, .mha) or "
                   "a folder for a DICOM series")
    p.add_argument("--radiograph", action="store_true",
                   help="treat IN as a radiograph (default: decided from the data)")
    _add_rescale(p)
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("preprocess", help="the seed-001 preprocessing of a CT",
                       description="Register a CT rigidly to a head template (Mattes mutual "
                       "information, 6 DOF, 3-level pyramid), resample to 1 mm in template "
                       "space, clip to [-1000, 1000] HU, crop/pad to 256^3 around the head, and "
                       "resample the target to 128^3. Writes OUT and OUT's sidecar .json "
                       "(transform back to the CT, provenance).")
    p.add_argument("ct", metavar="CT", help="CT file or DICOM folder")
    p.add_argument("--out", required=True, help="output volume (.nii.gz, .nrrd, .mha)")
    p.add_argument("--template", help="template CT to register to (default: $XRAYTOCT_TEMPLATE, "
                   "else the Rorden template that ships with XRayToCT)")
    p.add_argument("--no-register", action="store_true",
                   help="skip registration (the CT is already in template space)")
    p.add_argument("--window", choices=["brain", "full", "bone"],
                   help="map the output to [0, 1] in this window (default: HU)")
    p.add_argument("--size", type=int, default=256, help="grid side at 1 mm (default 256)")
    p.add_argument("--target-size", type=int, default=128,
                   help="side of the written target grid (default 128)")
    _add_rescale(p)
    p.set_defaults(func=_cmd_preprocess)

    p = sub.add_parser("drr", help="render AP and lateral DRRs of a CT",
                       description="Render anteroposterior and lateral digitally reconstructed "
                       "radiographs of a CT: DIR/<stem>_ap_drr.nrrd, DIR/<stem>_lateral_drr.nrrd and "
                       "DIR/<stem>_drr.json (their geometry), <stem> the CT's file name without "
                       "extension. "
                       "Row 0 is superior; AP shows the patient's left on the right, lateral "
                       "(source on the patient's right) shows the face on the right.")
    p.add_argument("ct", metavar="CT", help="CT file or DICOM folder (HU)")
    p.add_argument("--out-dir", required=True, help="output folder")
    p.add_argument("--backend", choices=["torch", "plastimatch"], default="torch",
                   help="torch (differentiable, CPU/GPU; default) or plastimatch (reference)")
    p.add_argument("--model", metavar="NAME|FILE",
                   help="render the views of this model (catalog name or .safetensors package) at "
                   "its geometry, centred on the CT (or --isocenter), instead of the geometry "
                   "options")
    _add_geometry(p)
    _add_device(p)
    _add_rescale(p)
    p.set_defaults(func=_cmd_drr)

    p = sub.add_parser("simulate", help="realistic radiographs of a CT (polychromatic, "
                       "scatter, blur, noise, DX/CR processing)",
                       description="Simulate AP and lateral radiographs of a CT (HU) as a real "
                       "X-ray system delivers them: a Kramers tungsten spectrum through aluminium "
                       "filtration, water and cortical-bone path lengths from the CT through the "
                       "project's DRR projector, Beer-Lambert over the spectrum (NIST mass "
                       "attenuation; beam hardening), collimation, scatter, focal-spot and "
                       "detector blur, quantum and electronic noise (seeded), then DX or CR "
                       "processing (log, look-up table, unsharp masking, shutter, side marker) "
                       "or none (the raw log image). Writes DIR/<stem>_<view>_simulated.nrrd "
                       "(with geometry), DIR/<stem>_<view>_simulated.dcm (DICOM DX or CR) and "
                       "DIR/<stem>_simulated.json (every setting). The images are synthetic.")
    p.add_argument("ct", metavar="CT", help="CT file or DICOM folder (HU)")
    p.add_argument("--out-dir", required=True, help="output folder")
    p.add_argument("--kvp", type=float, default=70.0, help="tube voltage in kV (default %(default)g)")
    p.add_argument("--filtration", type=float, default=2.5, metavar="MM_AL",
                   help="inherent + added filtration, mm aluminium (default %(default)g)")
    p.add_argument("--energy", type=float, metavar="KEV",
                   help="a monochromatic beam of this energy instead of the kVp spectrum")
    p.add_argument("--scatter", type=float, default=0.2, metavar="SPR",
                   help="mean scatter-to-primary ratio over the object (default %(default)g; 0 = none)")
    p.add_argument("--scatter-sigma", type=float, default=40.0, metavar="MM",
                   help="width (sigma, mm at the detector) of the scatter kernel (default %(default)g)")
    p.add_argument("--focal-spot", type=float, default=0.6, metavar="MM",
                   help="focal spot size (Gaussian FWHM, mm; default %(default)g)")
    p.add_argument("--detector-blur", type=float, default=0.4, metavar="MM",
                   help="detector blur (Gaussian FWHM, mm; default %(default)g)")
    p.add_argument("--dose", type=float, default=300.0, metavar="UGY",
                   help="open-beam air kerma at the detector, uGy: sets the quantum noise "
                        "(default %(default)g; 0 = no quantum noise)")
    p.add_argument("--electronic-noise", type=float, default=5.0, metavar="QUANTA",
                   help="read-out noise (standard deviation, quanta per pixel; default %(default)g)")
    p.add_argument("--no-noise", action="store_true", help="no quantum and no electronic noise")
    p.add_argument("--processing", choices=["dx", "cr", "none"], default="dx",
                   help="vendor processing: dx, cr, or none = the raw log image (default %(default)s)")
    p.add_argument("--collimation", type=float, default=20.0, metavar="MM",
                   help="shuttered margin at each detector edge, mm (default %(default)g; 0 = open)")
    p.add_argument("--no-marker", action="store_true", help="no burned-in side marker")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default %(default)d)")
    p.add_argument("--model", metavar="NAME|FILE",
                   help="the views and detector of this model (catalog name or .safetensors "
                        "package), centred on the CT (or --isocenter), instead of the geometry "
                        "options")
    _add_geometry(p)
    _add_device(p)
    _add_rescale(p)
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("phantom", help="generate a synthetic head CT",
                       description="Generate a synthetic head CT in HU (deterministic by seed).")
    p.add_argument("--out", required=True, help="output volume (.nii.gz, .nrrd, .mha)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=256, help="voxels per side (default 256)")
    p.add_argument("--spacing", type=float, default=1.0, help="mm per voxel (default 1)")
    p.add_argument("--findings", type=_findings_arg, default=[], metavar="LIST",
                   help="comma list of shunt, intraparenchymal_hemorrhage (ich), "
                        "subdural_hemorrhage (sdh), epidural_hemorrhage (edh), fracture; or "
                        "'random' (drawn from the seed); default none")
    p.add_argument("--ventricle-scale", type=float, metavar="S",
                   help="1 = normal ventricles, 2-2.6 = marked hydrocephalus (default: from the seed)")
    p.add_argument("--noise-hu", type=float, metavar="HU",
                   help="scanner noise SD in brain (default: 3-6 HU from the seed)")
    p.add_argument("--no-pose", action="store_true",
                   help="canonical pose (default: a random pose drawn from the seed)")
    p.add_argument("--rotation", type=float, nargs=3, metavar=("RX", "RY", "RZ"),
                   help="head rotation in degrees about LPS x, y, z (instead of a random pose)")
    p.add_argument("--translation", type=float, nargs=3, metavar=("TX", "TY", "TZ"),
                   help="head translation in mm (instead of a random pose)")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser("reconstruct", help="synthetic CT (sCT) from radiographs or a CT's DRRs",
                       description="Reconstruct a SYNTHETIC CT (sCT, not for diagnosis) with a "
                       "model (a catalog name, see 'xraytoct models', or a .safetensors file). "
                       "From radiographs (--ap [--lateral]: DICOM, PNG, TIFF, NRRD...; bone must "
                       "be bright, as in a DRR: MONOCHROME1 DICOM is inverted automatically, "
                       "--invert flips others; each image is assumed centred on the central ray "
                       "and is cropped/padded to the model's detector by its pixel spacing when "
                       "known, else its longer side spans the detector) the sCT is written in "
                       "the model's canonical template space. From a CT (--ct) the CT is "
                       "preprocessed, its DRRs are rendered at the model's geometry, and the sCT "
                       "is put back on the CT's own grid so it overlays the CT. Beside OUT: "
                       "OUT's .json (model, sha256, device, time, geometry, projection-"
                       "consistency SSIM/PSNR per view), the images the model saw and the "
                       "sCT's re-projections (.nrrd).")
    src = p.add_argument_group("input (either --ct, or radiographs for the model's views)")
    src.add_argument("--ap", metavar="AP", help="anteroposterior radiograph")
    src.add_argument("--lateral", metavar="LAT", help="lateral radiograph (source on the "
                     "patient's right, face on the image's right)")
    src.add_argument("--ct", metavar="CT", help="a CT file or DICOM folder (HU): reconstruct "
                     "from its DRRs")
    p.add_argument("--model", required=True, metavar="NAME|FILE",
                   help="catalog model name or .safetensors package")
    p.add_argument("--out", required=True, help="output sCT (.nii.gz, .nii, .nrrd, .mha) or a "
                   "folder for a DICOM series")
    p.add_argument("--template", help="registration template for --ct (default: "
                   "$XRAYTOCT_TEMPLATE, else the Rorden template that ships with XRayToCT)")
    p.add_argument("--no-register", action="store_true",
                   help="--ct: crop around the head in patient space instead of registering")
    p.add_argument("--invert", action="store_true",
                   help="invert the radiographs (for images where bone is dark)")
    p.add_argument("--refine", nargs="?", type=int, const=-1, default=None, metavar="STEPS",
                   help="fit the sCT to the input views through the differentiable DRR "
                   "(per-tissue intensity, smooth deformation, small residual; at most STEPS "
                   "steps, default 120, stopping early); the JSON keeps the consistency before "
                   "and after")
    p.add_argument("--samples", type=int, default=None, metavar="N",
                   help="a diffusion model: draw N samples; the sCT is their voxel-wise mean "
                   "and, for N >= 2, OUT's _uncertainty file beside it holds their standard "
                   "deviation in HU (same grid, labelled synthetic); the JSON gets its summary "
                   "and the sampler settings. With --refine each sample is fitted. Other "
                   "models take 1")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="the samples' random seed (default 0): the same seed gives the same "
                   "samples")
    p.add_argument("--harmonize", metavar="NAME|FILE",
                   help="translate each radiograph into the DRR domain with this harmoniser "
                   "(a pix2pix model, see `xraytoct models`) before the reconstruction; the "
                   "JSON records it")
    _add_device(p)
    _add_rescale(p)
    p.set_defaults(func=_cmd_reconstruct)

    p = sub.add_parser("models", help="list the bundled models",
                       description="List the model catalog (Resources/Models/models.json): name, "
                       "title, views, output size, training data, and whether the file is "
                       "present with the catalog's sha256.")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("train", help="train a model on a prepared dataset",
                       description="Train a model (x2ct_gan, x2ct_gan_single, cnn_inr) on a dataset "
                       "made by `xraytoct prepare`, with the seeds' losses (least-squares "
                       "adversarial + reconstruction + projection consistency through the DRR "
                       "renderer) and Adam. RUN_DIR gets config.yaml (the resolved settings), "
                       "log.csv, checkpoints/last.pt and checkpoints/best.pt. Settings come from "
                       "--config YAML (the TrainConfig keys); flags override them. Under torchrun "
                       "it trains with DDP on every process.")
    p.add_argument("--model", help="model name (x2ct_gan, x2ct_gan_single, cnn_inr; default "
                   "x2ct_gan, or the --init package's)")
    p.add_argument("--init", metavar="NAME|FILE",
                   help="fine-tune: start from a model package's weights (a catalog name, see "
                   "`xraytoct models`, or a .safetensors file); the model and its settings "
                   "come from the package, the output size from the dataset or --size "
                   "(the cnn_inr fits any size)")
    p.add_argument("--data", help="dataset folder made by `xraytoct prepare` (pix2pix: a "
                   "pairs folder made by `xraytoct pairs`)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder")
    p.add_argument("--config", metavar="YAML", help="training settings (see configs/)")
    p.add_argument("--epochs", type=int, help="training epochs (default 170, seed 001)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 3e-5, seed 001)")
    p.add_argument("--size", type=int, help="output grid side (default: the dataset's)")
    p.add_argument("--batch-size", type=int, help="cases per step per process (default 1)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="where to train (default auto: the GPU when there is one)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--workers", type=int, help="data loader processes (default 0)")
    p.add_argument("--threads", type=int, help="torch threads (default: one per core; on a "
                   "CPU shared with other jobs 1 is much faster)")
    p.add_argument("--val-every", type=int, help="validate every N epochs (default 1)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--exclude", action="append", metavar="ID",
                   help="leave a case or case group out of training and validation (repeatable; "
                   "a real CT's id, e.g. ct-invesalius_0051, leaves out its augmented copies too)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("export", help="package a training checkpoint as a model file",
                       description="Write one .safetensors model file from a training run: the "
                       "weights, and in its header the model's spec (views, sizes, DRR geometry, "
                       "intensity mapping), config, training data and validation metrics.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder made by `xraytoct train`")
    p.add_argument("--out", required=True, metavar="FILE", help="output .safetensors file")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best",
                   help="which checkpoint (default best)")
    p.add_argument("--title", help="the model's title in its metadata")
    p.add_argument("--fp16", action="store_true",
                   help="store the weights in half precision (half the file size)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("prepare", help="build the cached dataset of CT/DRR cases",
                       description="Build a dataset of cases in DIR: each case is a head CT "
                       "preprocessed with the seed-001 protocol onto the canonical grid (SIZE^3 "
                       "over 256 mm, centred on the LPS origin; HU clipped to +-1000) with its AP "
                       "and lateral DRRs (rendered from the 1 mm volume at one fixed geometry) and "
                       "the transform back to its source CT. Sources: a folder of CTs (--ct-dir), "
                       "generated phantoms (--phantoms), or both; --augment adds augmented copies "
                       "of each CT. Splits (train/val/test) are fixed by case id. Safe against a "
                       "killed run: rerunning skips complete cases and rebuilds half-written ones "
                       "(`xraytoct prepare --out DIR` alone resumes with DIR's settings).")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset folder")
    p.add_argument("--ct-dir", metavar="DIR", help="folder of head CTs in HU (NIfTI, NRRD, "
                   "MetaImage files, DICOM series folders)")
    p.add_argument("--phantoms", type=int, default=0, metavar="N",
                   help="number of generated phantom heads (default 0)")
    p.add_argument("--size", type=int, default=128, help="target voxels per side (default 128)")
    p.add_argument("--pixels", type=int, help="DRR pixels per side (default: --size)")
    p.add_argument("--window", default="brain", choices=["brain", "full", "bone", "soft_tissue"],
                   help="the training window the dataset is meant for, recorded in the manifest "
                   "(targets are stored in HU; default brain)")
    p.add_argument("--template", help="template CT to register CTs to (default: "
                   "$XRAYTOCT_TEMPLATE, else the Rorden template that ships with XRayToCT)")
    p.add_argument("--no-register", action="store_true",
                   help="do not register CTs: centre each on its head in patient space")
    p.add_argument("--augment", type=int, default=0, metavar="N",
                   help="augmented copies per CT (elastic, scale, pose, slice thickness, "
                   "coverage, support in the DRRs or not, intensity, noise; default 0)")
    p.add_argument("--ct-split", action="append", metavar="NAME=SPLIT",
                   help="put real CT NAME (its case id, with or without the ct- prefix) and all "
                   "its copies in SPLIT (train, val or test) instead of the hashed split; "
                   "NAME all: every real CT (a CT's own name wins); repeatable")
    p.add_argument("--findings", default="random", metavar="random|none|a,b",
                   help="phantom findings: random (default), none, or a comma-separated list")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--drr-spacing", type=float, default=1.0, metavar="MM",
                   help="voxel size of the volume DRRs are rendered from (default 1, the seed "
                   "protocol; coarser, e.g. 4, only for quick trials)")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("evaluate", help="evaluate sCT predictions against ground-truth CTs",
                       description="Pair prediction and ground-truth volumes by case id (file "
                       "name without .nii.gz/.nii/.nrrd/.mha; --gt may be a dataset with "
                       "cases/<id>/ct.nii.gz), compute SSIM (3D and the published per-slice "
                       "convention), PSNR, MSE, MAE in HU and cosine similarity in each window "
                       "and region, with the baselines, and write OUT/metrics.csv "
                       "(case,model,metric,window,region,value), OUT/summary.json (n, mean with "
                       "95% CI, median with IQR, Wilcoxon tests, gains over the baselines) and "
                       "a self-contained OUT/report.html. A failed case is listed, not fatal. "
                       "When a prediction has the JSON `xraytoct reconstruct` writes beside it, "
                       "only the voxels inside the model's field of view are scored.")
    p.add_argument("--pred", action="append", required=True, metavar="DIR",
                   help="folder of predictions (one model; repeat for several)")
    p.add_argument("--name", action="append", metavar="NAME",
                   help="model name for each --pred, in order (default: the folder's name)")
    p.add_argument("--gt", required=True, metavar="DIR", help="ground-truth folder or dataset")
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="output folder")
    p.add_argument("--window", action="append", choices=["brain", "full", "bone"],
                   help="intensity window(s) (repeatable; default: brain and full)")
    p.add_argument("--mask", choices=["head", "none"], action="append",
                   help="region(s): head (ground truth > -500 HU, largest component, holes "
                        "filled) and/or none (whole volume); default: both")
    p.add_argument("--baseline", action="append",
                   choices=["outline", "template", "atlas", "backprojection"],
                   help="baseline(s) to evaluate beside the models (repeatable): outline (a "
                        "constant inside the first prediction's own head outline), template "
                        "(an average head placed through the prediction's canonical_to_ct), "
                        "atlas (that average head fitted to the case's views, as --refine fits "
                        "an sCT: the classical 2D/3D method), backprojection (the case's DRRs "
                        "back-projected: the dataset's, else those beside the prediction)")
    p.add_argument("--template", metavar="FILE",
                   help="template volume (HU, in the model's frame) for the template baseline "
                        "(default: the mean of --dataset's training targets, else the shipped "
                        "head CT template)")
    p.add_argument("--dataset", metavar="DIR", help="dataset folder (manifest.json, "
                   "cases/<id>/): training targets, DRRs (default: --gt if it is one)")
    p.add_argument("--metric", action="append", metavar="NAME",
                   help="metric(s) (default: ssim ssim_slices psnr mse mae_hu cosine)")
    p.add_argument("--split", metavar="NAME", help="only the dataset's cases of this split "
                   "(e.g. test: the template baseline is built from the train split)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("compare", help="compare an sCT with its ground-truth CT (metrics, "
                       "difference, picture)",
                       description="The Slicer module's Compare as a command: SSIM, PSNR, cosine "
                       "similarity and MAE (brain window and full range; head and whole volume; "
                       "the sCT resampled onto the CT's grid) into OUT/metrics.csv and "
                       "OUT/metrics.json, the difference sCT - CT (HU, on the sCT's grid) into "
                       "OUT/difference.nrrd, and OUT/compare.png: the module's compare layout "
                       "(sCT on top, CT below; axial, sagittal, coronal through one linked "
                       "position; the difference as a colour overlay with its legend) rendered "
                       "by Slicer's own slice logic (needs the slicer-core package; without it "
                       "the picture is left out, with a note).")
    p.add_argument("sct", metavar="SCT", help="the synthetic CT (a volume file, HU)")
    p.add_argument("ct", metavar="CT", help="the ground-truth CT (volume file or DICOM folder)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--position", type=float, nargs=3, metavar=("R", "A", "S"),
                   help="RAS point (mm, as Slicer shows it) every view cuts through (default: "
                        "the centre of the sCT's head)")
    p.add_argument("--range-hu", type=float, default=500.0, metavar="HU",
                   help="the difference colours span -HU..+HU (default %(default)g)")
    p.add_argument("--opacity", type=float, default=0.5,
                   help="opacity of the difference overlay, 0-1 (default %(default)g)")
    p.add_argument("--overlay", choices=["sct", "both", "none"], default="sct",
                   help="views with the difference overlay: the sCT row (default), both rows "
                        "(as the Slicer module shows it) or none")
    p.add_argument("--blend", choices=["add", "alpha"], default="add",
                   help="add (default): opacity x a blue-black-red map is added to the grey, so "
                        "equal voxels keep theirs; alpha: the Slicer module's blend of its "
                        "blue-white-red map")
    p.add_argument("--window", choices=["full", "brain", "bone", "soft_tissue"], default="full",
                   help="grey-level window of the views (default %(default)s: [-1000, 1000] HU)")
    p.add_argument("--uncertainty", metavar="FILE",
                   help="the sCT's uncertainty map (reconstruct --samples); default: "
                   "SCT's _uncertainty file when there is one. Adds its mean inside the head and "
                   "its rank correlation with the absolute error to the metrics")
    p.add_argument("--no-picture", action="store_true",
                   help="write the metrics and the difference only (what the Slicer module reads)")
    p.add_argument("--pane-size", type=int, default=256, metavar="PX",
                   help="pixels per side of each view (default %(default)d)")
    _add_rescale(p)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("pairs", help="build a pairs folder (simulated radiograph -> DRR) for "
                       "pix2pix", description="Write a pairs folder OUT for 2D translation "
                       "(`xraytoct train --model pix2pix --data OUT`): for each CT of SOURCE (a "
                       "dataset made by `xraytoct prepare`, whose cases keep their split; a CT "
                       "file; or a folder of CT files, split by a hash of the name), --per-ct "
                       "simulated radiographs per view with physics drawn at random (kVp, "
                       "scatter, dose, blur, collimation, CR/DX/raw processing), each paired with "
                       "the view's DRR: OUT/manifest.json and OUT/{train,val,test}/"
                       "<id>_input.nrrd, <id>_target.nrrd.")
    p.add_argument("source", metavar="SOURCE", help="dataset folder, CT file or folder of CTs")
    p.add_argument("--out", required=True, metavar="PAIRS", help="new pairs folder")
    p.add_argument("--per-ct", type=int, default=1, metavar="N",
                   help="simulated radiographs per CT and view (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random physics and noise (default 0)")
    p.add_argument("--pixels", type=int, help="detector pixels for CT files (default 64)")
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N CTs")
    p.set_defaults(func=_cmd_pairs)

    p = sub.add_parser("harmonize", help="translate a radiograph into the DRR domain (pix2pix)",
                       description="Harmonise a radiograph (DICOM, NRRD, PNG...; bone bright, "
                       "--invert otherwise) with a 2D translation model (a harmoniser, see "
                       "`xraytoct models`): it is translated into the DRR domain the "
                       "reconstruction models were trained on, normalised to [0, 1], and written "
                       "to OUT (.nrrd/.mha keep the input's pixel spacing, geometry and view; "
                       "the metadata say it was harmonised and by which model). With --evaluate, "
                       "IN is a pairs folder: PSNR, SSIM and FSIM of its --split pairs before and "
                       "after harmonisation (OUT, if given: the JSON).")
    p.add_argument("input", metavar="IN", help="radiograph file (or, with --evaluate, a pairs "
                   "folder)")
    p.add_argument("--model", required=True, metavar="NAME|FILE",
                   help="harmoniser: catalog name or .safetensors package")
    p.add_argument("--out", metavar="OUT", help="output image (.nrrd, .mha, .nii.gz); with "
                   "--evaluate, an optional .json")
    p.add_argument("--view", help="the view (ap, lateral...) when the file does not say")
    p.add_argument("--invert", action="store_true",
                   help="invert the radiograph first (for images where bone is dark)")
    p.add_argument("--evaluate", action="store_true",
                   help="IN is a pairs folder: score the harmoniser on it")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="--evaluate: which pairs (default test)")
    _add_device(p)
    p.set_defaults(func=_cmd_harmonize)

    p = sub.add_parser("demo", help="the main job on an embedded default (a phantom head)",
                       description="The whole chain on a generated phantom head (nothing is a "
                       "patient): phantom CT -> AP and lateral DRRs -> synthetic CT (sCT) from the "
                       "bundled model, put back on the CT's grid -> metrics against the CT -> "
                       "OUT/report/report.html. Prints where the report is.")
    p.add_argument("--out", default="xraytoct-demo", help="output folder (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    p.add_argument("--size", type=int, default=256, help="phantom voxels per side over 256 mm "
                   "(default 256: 1 mm, the seed protocol)")
    p.add_argument("--model", help="catalog name or .safetensors file (default: the first "
                   "bundled model, see `xraytoct models`)")
    _add_device(p)
    p.set_defaults(func=_cmd_demo)
    return parser


# ----------------------------------------------------------------------------------------

def _tqdm_progress(desc: str) -> tuple[ProgressCallback, Callable[[], None]]:
    """A progress callback: a tqdm bar on stderr on a terminal; otherwise (a log, a pipe, the
    Slicer console) plain lines ``desc: 42% message``, one per 5 % step of progress or every
    15 s at most."""
    if not sys.stderr.isatty():
        return _line_progress(desc), lambda: None
    from tqdm import tqdm
    bar = tqdm(total=1000, desc=desc, unit="‰", leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def cb(fraction: float, message: str):
        bar.n = int(fraction * 1000)
        bar.set_postfix_str(message, refresh=True)
        return None

    return cb, bar.close


def _line_progress(desc: str, step: float = 0.05, every_s: float = 15.0,
                   new_message_s: float = 2.0, stream: Any = None) -> ProgressCallback:
    """Plain progress lines on ``stream`` (default stderr) for a non-terminal (see
    :func:`_tqdm_progress`): at each ``step`` of progress, at a new message ``new_message_s``
    after the last line, and every ``every_s`` (``process.parse_progress`` reads them back)."""
    import time
    last = {"bucket": -1, "t": 0.0, "message": ""}

    def cb(fraction: float, message: str):
        bucket, now = int(fraction / step + 1e-9), time.monotonic()
        if (bucket != last["bucket"] or now - last["t"] >= every_s
                or (message != last["message"] and now - last["t"] >= new_message_s)):
            last.update(bucket=bucket, t=now, message=message)
            print(f"{desc}: {fraction:4.0%} {message}".rstrip(), file=stream or sys.stderr, flush=True)
        return None

    return cb


def _read_ct(args, path: str):
    from .io import read_volume
    return read_volume(path, rescale=tuple(args.rescale) if args.rescale else None,
                       series_uid=args.series)


def _write_json(path: Path, data: dict) -> None:
    from .io import write_json
    write_json(path, data)


def _refuse_file_ancestor(path: Path, folder: Path) -> None:
    """InputError when ``folder`` or the nearest of its existing ancestors is a file."""
    for up in (folder, *folder.parents):
        if up.exists():
            if not up.is_dir():
                raise InputError(path, f"{up} is a file, not a folder")
            return


def _make_parent(path: str | os.PathLike) -> Path:
    """Create the missing folder of the output file ``path`` (refusing a parent that is a
    file, with one line); returns ``path`` as a Path."""
    p = Path(path)
    _refuse_file_ancestor(p, p.parent)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(p, f"cannot create the folder {p.parent}: {err.strerror or err}") from None
    return p


def _out_dir(path: str) -> Path:
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise InputError(d, "exists and is not a folder")
    _make_parent(d)
    d.mkdir(exist_ok=True)
    return d


_INPUTS = {"convert": ("input",), "preprocess": ("ct", "template"), "drr": ("ct",),
           "simulate": ("ct",),
           "reconstruct": ("ap", "lateral", "ct", "template"), "train": ("data", "config"),
           "export": ("run_dir",), "prepare": ("ct_dir", "template"),
           "evaluate": ("pred", "gt", "template", "dataset"), "compare": ("sct", "ct", "uncertainty")}
"""Each command's arguments naming files or folders that must exist."""
_OUTPUT_FILES = {"convert": "output", "preprocess": "out", "phantom": "out",
                 "reconstruct": "out", "export": "out"}
_OUTPUT_DIRS = {"drr": "out_dir", "simulate": "out_dir", "evaluate": "out", "demo": "out", "train": "out",
                "prepare": "out", "compare": "out"}
_MODEL_FILES = ("model", "init")


def _check_paths(args) -> None:
    """Refuse missing inputs and outputs under a file, before any heavy import (torch)."""
    command = getattr(args, "command", None)
    for name in _INPUTS.get(command, ()):
        values = getattr(args, name, None)
        for value in (values if isinstance(values, list) else [values]):
            if value is not None and not Path(value).exists():
                raise InputError(value, "no such file or folder")
    for name in _MODEL_FILES:
        value = getattr(args, name, None)
        if isinstance(value, str) and Path(value).suffix == ".safetensors" \
                and not Path(value).is_file():
            raise InputError(value, "no such model file")
    if command in _OUTPUT_FILES and getattr(args, _OUTPUT_FILES[command], None):
        out = Path(getattr(args, _OUTPUT_FILES[command]))
        _refuse_file_ancestor(out, out.parent)
    if command in _OUTPUT_DIRS and getattr(args, _OUTPUT_DIRS[command], None):
        out = Path(getattr(args, _OUTPUT_DIRS[command]))
        if out.exists() and not out.is_dir():
            raise InputError(out, "exists and is not a folder")
        _refuse_file_ancestor(out, out.parent)


def _cmd_convert(args) -> int:
    from .io import read_radiograph, read_volume, write_dicom_series, write_radiograph, write_volume
    out = _make_parent(args.output)
    to_dicom = out.suffix == "" or out.is_dir()
    if args.radiograph:
        rad = read_radiograph(args.input)
        if to_dicom:
            raise InputError(out, "radiographs are written as NRRD/NIfTI/MHA files, not DICOM "
                             "folders: give OUT a .nrrd, .nii.gz or .mha extension")
        write_radiograph(rad, out)
    else:
        try:
            vol = read_volume(args.input, rescale=tuple(args.rescale) if args.rescale else None,
                              series_uid=args.series)
        except InputError as err:
            if "2D" not in err.problem and "radiograph" not in err.problem:
                raise
            rad = read_radiograph(args.input)  # a 2D image: a radiograph
            if to_dicom:
                raise InputError(out, "radiographs are written as NRRD/NIfTI/MHA files") from err
            write_radiograph(rad, out)
            print(f"wrote radiograph {out}")
            return 0
        if to_dicom:
            files = write_dicom_series(vol, out, source=vol, synthetic=False,
                                       series_description=f"converted by {PROG}")
            print(f"wrote {len(files)} DICOM files to {out}")
            return 0
        write_volume(vol, out)
    print(f"wrote {out}")
    return 0


def _cmd_preprocess(args) -> int:
    from . import preprocess as pp
    from .io import write_volume
    ct = _read_ct(args, args.ct)
    cb, close = _tqdm_progress("preprocess")
    try:
        res = pp.preprocess_ct(ct, args.template, register=not args.no_register, size=args.size,
                               target_size=args.target_size, window=args.window, progress=cb)
    finally:
        close()
    out = _make_parent(args.out)
    write_volume(res.target, out)
    sidecar = out.with_name(out.name.split(".")[0] + ".json")
    _write_json(sidecar, res.to_dict() if hasattr(res, "to_dict") else {})
    print(f"wrote {out} and {sidecar}")
    return 0


def _geometry_kw(args) -> dict:
    return dict(pixels=args.pixels, sad=args.sad, sid=args.sid, detector_mm=args.detector_size,
                isocenter=args.isocenter)


def _write_drrs(images: dict, out: Path, stem: str, extra: dict | None = None) -> list[Path]:
    """``out/<stem>_<view>_drr.nrrd`` per view and ``out/<stem>_drr.json`` (their geometry);
    returns the written paths."""
    from .io import write_radiograph
    written = [write_radiograph(rad, out / f"{stem}_{view}_drr.nrrd")
               for view, rad in images.items()]
    written.append(out / f"{stem}_drr.json")
    _write_json(written[-1], {
        "views": {v: r.geometry.to_dict() for v, r in images.items()},
        "units": next(iter(images.values())).metadata.get("units"),
        "hu_conversion": next(iter(images.values())).metadata.get("hu_conversion"),
        **(extra or {})})
    return written


def _cmd_drr(args) -> int:
    from .drr import DRR, biplanar_geometry
    from .drr_plastimatch import render_views
    ct = _read_ct(args, args.ct)
    try:
        geoms = (_model_geometries(args.model, args.isocenter or ct.center) if args.model
                 else biplanar_geometry(ct, **_geometry_kw(args)))
        images = (DRR(geoms).render(ct, device=args.device) if args.backend == "torch"
                  else render_views(ct, geoms))
    except ValueError as err:  # geometry out of range
        raise InputError(None, f"invalid DRR geometry: {err}") from err
    out = _out_dir(args.out_dir)
    stem = Path(args.ct).resolve().name.split(".")[0]  # ct.nii.gz -> ct; a DICOM folder's name
    written = _write_drrs(images, out, stem,
                          {"ct": str(Path(args.ct).resolve()), "backend": args.backend})
    print("wrote " + ", ".join(str(f) for f in written))
    return 0


def _model_geometries(model: str, center) -> dict:
    """``{view: ProjectionGeometry}`` of a model package's views, centred on ``center`` (LPS)."""
    from .geometry import ProjectionGeometry
    from .models.package import read_info, resolve_model
    spec = read_info(resolve_model(model))["spec"]
    return {v: ProjectionGeometry.from_dict(spec["geometry"][v]).centered_on(center)
            for v in spec["views"]}


def _cmd_simulate(args) -> int:
    from .drr import biplanar_geometry
    from .simulate import SimulationSettings, check_ct, simulate, write_simulation
    try:
        settings = SimulationSettings(
            kvp=args.kvp, filtration_mm_al=args.filtration, energy_kev=args.energy,
            scatter=args.scatter, scatter_sigma_mm=args.scatter_sigma,
            focal_spot_mm=args.focal_spot, detector_blur_mm=args.detector_blur,
            dose_ugy=args.dose, electronic_noise=args.electronic_noise,
            processing=args.processing, collimation_mm=args.collimation,
            marker=not args.no_marker, seed=args.seed)
    except ValueError as err:
        raise InputError(None, f"invalid simulation setting: {err}") from None
    if args.no_noise:
        settings = settings.noiseless()
    ct = _read_ct(args, args.ct)
    check_ct(ct)
    try:
        geoms = (_model_geometries(args.model, args.isocenter or ct.center) if args.model
                 else biplanar_geometry(ct, **_geometry_kw(args)))
        images = simulate(ct, geoms, settings, device=args.device)
    except ValueError as err:  # geometry or collimation out of range
        raise InputError(None, f"cannot simulate: {err}") from err
    out = _out_dir(args.out_dir)
    stem = Path(args.ct).resolve().name.split(".")[0]
    written = write_simulation(images, out, stem, settings,
                               extra={"ct": str(Path(args.ct).resolve()),
                                      "model": args.model, "views_geometry": "model" if
                                      args.model else "options"})
    print("wrote " + ", ".join(str(f) for f in written) + " (SIMULATED radiographs, synthetic)")
    return 0


def _findings_arg(text: str):
    """argparse type of ``--findings``: validated names (a usage error, exit 2, otherwise)."""
    from .phantom import parse_findings
    try:
        return parse_findings(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _cmd_phantom(args) -> int:
    from .io import write_volume
    from .phantom import head_phantom
    if args.no_pose and (args.rotation or args.translation):
        raise XRayToCTError("--no-pose conflicts with --rotation/--translation")
    try:
        vol = head_phantom(args.size, args.spacing, seed=args.seed, findings=args.findings,
                           ventricle_scale=args.ventricle_scale, noise_hu=args.noise_hu,
                           pose=not args.no_pose, rotation_deg=args.rotation,
                           translation_mm=args.translation)
    except ValueError as err:
        raise XRayToCTError(f"phantom: {err}") from None
    write_volume(vol, _make_parent(args.out))
    print(f"wrote {args.out} (seed {args.seed}, findings: {', '.join(vol.metadata['findings']) or 'none'})")
    return 0


def _cmd_reconstruct(args) -> int:
    from .inference import Reconstructor, check_output_path, write_result
    from .io import read_radiograph
    radiographs = {v: getattr(args, v) for v in ("ap", "lateral") if getattr(args, v)}
    if args.ct and radiographs:  # checked before any file is read (the library says it too)
        raise InputError(None, "give either --ct or radiographs (--ap/--lateral), not both")
    if not args.ct and not radiographs:
        raise InputError(None, "nothing to reconstruct from: give --ap AP [--lateral LAT] or --ct CT")
    if args.refine is not None and args.refine < -1:
        raise InputError(None, f"--refine takes a number of steps (0 or more), got {args.refine}")
    if args.samples is not None and args.samples < 1:
        raise InputError(None, f"--samples takes a number of samples (1 or more), "
                               f"got {args.samples}")
    out = check_output_path(args.out)
    ct = _read_ct(args, args.ct) if args.ct else None
    images = {v: read_radiograph(f, view=v) for v, f in radiographs.items()}
    rec = Reconstructor(args.model, device=args.device, harmonize=args.harmonize)
    cb, close = _tqdm_progress("reconstruct")
    refine = True if args.refine == -1 else args.refine
    try:
        result = rec.reconstruct(ct=ct, views=images, progress=cb, invert=args.invert,
                                 template=args.template, refine=refine,
                                 samples=args.samples, seed=args.seed,
                                 register=False if args.no_register else
                                 (True if args.template else "auto"))
    finally:
        close()
    for w in result.info.get("warnings") or []:
        print(f"warning: {w}", file=sys.stderr)
    files = write_result(result, out, source=ct,
                         extra={"input_files": {k: str(Path(v).resolve()) for k, v in
                                               {**radiographs, "ct": args.ct}.items() if v}})
    scores = ", ".join(f"{v} SSIM {s['ssim']:.3f} PSNR {s['psnr']:.1f} dB"
                       for v, s in result.consistency["views"].items())
    print(f"wrote {out} (SYNTHETIC CT, not for diagnosis) on {result.info['device']} in "
          f"{result.info['time_s']:.1f} s; projection consistency: {scores}")
    if "uncertainty" in result.info:
        u, s = result.info["uncertainty"], result.info["sampler"]
        print(f"{s['samples']} samples (seed {s['seed']}, {s['steps']} DDIM steps): the sCT is "
              f"their mean; spread inside the head {u['mean_sd_head_hu']:.1f} HU on average, "
              f"{u['share_head_sd_above_100_hu']:.1%} of head voxels above 100 HU")
    if "refine" in result.info:
        fit, before = result.info["refine"], result.info["consistency_before_refine"]["mean"]
        print(f"refined in {fit['steps_run']} steps ({fit['time_s']:.1f} s): view error "
              f"{fit['view_error']['before']:.1%} -> {fit['view_error']['after']:.1%}, mean "
              f"consistency SSIM {before['ssim']:.3f} -> {result.consistency['mean']['ssim']:.3f}")
    if "harmonize" in result.info:
        print(f"each radiograph harmonised by {result.info['harmonize']['model']} first")
    print(f"details in {files[-1]}")
    return 0


def _cmd_pairs(args) -> int:
    from .pairs import build_pairs
    cb, close = _tqdm_progress("pairs")
    try:
        root = build_pairs(args.source, args.out, per_ct=args.per_ct, seed=args.seed,
                           pixels=args.pixels, limit=args.limit, progress=cb)
    except ValueError as err:
        raise InputError(None, f"cannot build pairs: {err}") from None
    finally:
        close()
    man = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    counts = ", ".join(f"{s} {len(v)}" for s, v in man["split"].items())
    print(f"wrote {root}: {len(man['pairs'])} pairs ({counts}; SIMULATED inputs, DRR targets)")
    return 0


def _cmd_harmonize(args) -> int:
    from .harmonize import evaluate_pairs, harmonize_file
    from .io import write_json
    if args.evaluate:
        res = evaluate_pairs(args.input, args.model, split=args.split, device=args.device)
        for stage in ("before", "after"):
            s = res[stage]
            print(f"{stage:6s} ({res['pairs']} {args.split} pairs): " + ", ".join(
                f"{m.upper()} {s[m]['mean']:.3f} ± {s[m]['std']:.3f}" for m in s))
        if args.out:
            write_json(_make_parent(args.out), res)
            print(f"wrote {args.out}")
        return 0
    if not args.out:
        raise InputError(None, "no output: pass --out OUT (.nrrd, .mha or .nii.gz)")
    out = harmonize_file(args.input, args.model, _make_parent(args.out), view=args.view,
                         invert=args.invert, device=args.device)
    print(f"wrote {out} (harmonised by {args.model}: the DRR domain, normalised to [0, 1])")
    return 0


def _cmd_models(args) -> int:
    from .io import json_text
    from .models import CATALOG_PATH, catalog
    from .models.package import sha256_file
    rows = []
    for e in catalog():
        path = (CATALOG_PATH.parent / e["file"]).resolve()
        present = path.is_file()
        rows.append({"name": e["name"], "title": e.get("title"), "views": list(e.get("views") or []),
                     "output_size": e.get("output_size"), "trained_on": e.get("trained_on"),
                     "kind": e.get("kind", "reconstruction"),
                     **({"input_domain": e.get("input_domain"),
                         "target_domain": e.get("target_domain"),
                         "image_size": e.get("image_size")} if e.get("kind") else {}),
                     "file": str(path), "present": present,
                     "sha256_ok": present and sha256_file(path) == str(e["sha256"]).lower()})
    if args.json:
        print(json_text(rows, indent=2))
        return 0
    if not rows:
        print(f"no models in the catalog ({CATALOG_PATH})")
    for r in rows:
        state = "ok" if r["sha256_ok"] else ("SHA-256 MISMATCH" if r["present"] else "file missing")
        trained = r["trained_on"]
        if isinstance(trained, dict):
            trained = trained.get("description") or json_text(trained)[:120]
        print(f"{r['name']}: {r['title'] or ''}")
        if r["kind"] != "reconstruction":  # a harmoniser: 2D in, 2D out
            print(f"    harmoniser ({r['kind']}): {r['input_domain']} -> {r['target_domain']}, "
                  f"{r['image_size']}^2 images, trained on {trained or 'unknown'}; file "
                  f"{r['file']} [{state}]")
            continue
        print(f"    views {'+'.join(r['views'])}, output {r['output_size']}^3, trained on "
              f"{trained or 'unknown'}; file {r['file']} [{state}]")
    return 0


def _cmd_train(args) -> int:
    from .training import TrainConfig, train
    flags = {"model": args.model, "init": args.init, "data": args.data, "epochs": args.epochs,
             "lr": args.lr,
             "size": args.size, "batch_size": args.batch_size, "device": args.device,
             "workers": args.workers, "threads": args.threads, "val_every": args.val_every,
             "seed": args.seed,
             "exclude": args.exclude}
    flags = {k: v for k, v in flags.items() if v is not None}
    saved = Path(args.out) / "config.yaml"
    if args.config:
        cfg = TrainConfig.from_yaml(args.config)
    elif args.resume and saved.is_file():
        cfg = TrainConfig.from_yaml(saved)
    else:
        cfg = TrainConfig()
    cfg = cfg.replace(**flags, out=args.out, resume=args.resume)
    if not cfg.data:
        raise InputError(None, "no dataset: pass --data DIR (made by `xraytoct prepare`)")
    cb, close = _tqdm_progress("train")
    try:
        run = train(cfg, progress=cb)
    finally:
        close()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"training run in {run.resolve()}: log.csv, checkpoints/last.pt, checkpoints/best.pt")
    return 0


def _cmd_export(args) -> int:
    from .training import export_run
    out = export_run(args.run_dir, _make_parent(args.out), checkpoint=args.checkpoint,
                     title=args.title, fp16=args.fp16)
    print(f"wrote {out}")
    return 0


def _cmd_prepare(args) -> int:
    from .data import prepare_dataset
    from .dataset import load_manifest
    ct_splits = None
    for item in args.ct_split or []:
        name, sep, split = item.partition("=")
        if not sep or not name.strip() or not split.strip():
            raise InputError(None, f"--ct-split takes NAME=SPLIT (SPLIT: train, val or test), "
                                   f"got {item!r}")
        ct_splits = {**(ct_splits or {}), name.strip(): split.strip()}
    cb, close = _tqdm_progress("prepare")
    try:
        manifest = prepare_dataset(
            args.out, ct_dir=args.ct_dir, phantoms=args.phantoms, size=args.size,
            pixels=args.pixels, window=args.window, template=args.template,
            register=not args.no_register, augment=args.augment, findings=args.findings,
            workers=args.workers, seed=args.seed, drr_spacing=args.drr_spacing,
            ct_splits=ct_splits, progress=cb)
    finally:
        close()
    m = load_manifest(manifest)
    counts = ", ".join(f"{len(m['split'][s])} {s}" for s in ("train", "val", "test"))
    print(f"{m['complete']} of {m['planned']} cases complete ({counts}) in {manifest}")
    return 0


def _cmd_evaluate(args) -> int:
    from .evaluation import run_evaluation
    regions = [("whole" if m == "none" else m) for m in (args.mask or ["head", "none"])]
    kw = dict(names=args.name, windows=tuple(dict.fromkeys(args.window or ["brain", "full"])),
              regions=tuple(dict.fromkeys(regions)), baselines=tuple(dict.fromkeys(args.baseline or [])),
              template=args.template, dataset=args.dataset, split=args.split)
    if args.metric:
        kw["metrics"] = tuple(dict.fromkeys(args.metric))
    cb, close = _tqdm_progress("evaluate")
    try:
        paths = run_evaluation(Path(args.out), args.pred, args.gt, progress=cb, **kw)
    except ValueError as err:  # an unknown metric name, say
        raise InputError(None, str(err)) from err
    finally:
        close()
    summary = json.loads(paths["summary"].read_text())
    if summary["failures"]:
        print(f"{len(summary['failures'])} case(s) failed (listed in the report):", file=sys.stderr)
        for f in summary["failures"][:10]:
            print(f"  {f['case']} / {f['model']}: {f['reason']}", file=sys.stderr)
    print(f"wrote {paths['csv']}, {paths['summary']} and {paths['report']}")
    return 0


def _cmd_compare(args) -> int:
    import math

    from .compare import compare_volumes, write_comparison
    from .compare_view import unavailable
    from .evaluation import uncertainty_file
    from .io import read_volume
    if not (math.isfinite(args.range_hu) and args.range_hu > 0):
        raise InputError(None, f"--range-hu must be a positive number of HU, got {args.range_hu:g}")
    if not 0.0 <= args.opacity <= 1.0:
        raise InputError(None, f"--opacity must be between 0 and 1, got {args.opacity:g}")
    if args.pane_size < 16:
        raise InputError(None, f"--pane-size must be at least 16 pixels, got {args.pane_size}")
    out = _out_dir(args.out)
    missing = None if args.no_picture else unavailable()
    cb = _line_progress("compare")
    cb(0.0, "reading the volumes")
    sct, ct = read_volume(args.sct), _read_ct(args, args.ct)
    spread_file = args.uncertainty or uncertainty_file(args.sct)
    spread = read_volume(spread_file, require_hu=False) if spread_file else None
    cb(0.2, "metrics and difference")
    comparison = compare_volumes(sct, ct, uncertainty=spread)
    picture = missing is None and not args.no_picture
    cb(0.6, "writing" + (" and rendering compare.png" if picture else ""))
    try:
        paths = write_comparison(comparison, out, sct_path=args.sct, ground_truth_path=args.ct,
                                 picture=picture, position_ras=args.position,
                                 range_hu=args.range_hu, opacity=args.opacity,
                                 overlay=args.overlay, window=args.window, pane_px=args.pane_size,
                                 blend=args.blend)
    except ValueError as err:  # a position outside both volumes, say
        raise InputError(None, str(err)) from err
    cb(1.0, "done")
    if missing:
        print(f"note: {missing}; wrote the metrics and the difference without it", file=sys.stderr)
    print(f"SYNTHETIC CT compared with {args.ct}: {comparison.summary()}")
    print(f"wrote {', '.join(p.name for p in paths.values())} in {out.resolve()}")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo
    cb, close = _tqdm_progress("demo")
    try:
        paths = run_demo(Path(args.out), seed=args.seed, size=args.size, device=args.device,
                         model=args.model, progress=cb)
    finally:
        close()
    print(f"demo written to {Path(args.out).resolve()} (see README.txt there)")
    print(f"sCT (synthetic): {paths['sct']}")
    print(f"report: {Path(paths['report']).resolve()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``xraytoct`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code or 0)
    try:
        _check_paths(args)
        return int(args.func(args) or 0)
    except XRayToCTError as err:  # bad input, cancelled, or another problem a user can fix
        hint = _HINTS.get(type(err))
        print(f"error: {err}" + (f" ({hint})" if hint else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # an internal failure: say so plainly
        if os.environ.get("XRAYTOCT_DEBUG"):
            traceback.print_exc()
        print(f"internal error: {type(err).__name__}: {err} (set XRAYTOCT_DEBUG=1 for the "
              "traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The main job on an embedded default, end to end: a generated phantom head CT -> its AP and
lateral DRRs (the model's geometry) -> a synthetic CT from the bundled model -> the sCT back on
the CT's grid -> metrics against the CT -> an HTML report.

Nothing here is a patient: the head is generated (:mod:`~XRayToCTLib.phantom`), and the
reconstruction is a synthetic CT, labelled so in every file.
"""
from __future__ import annotations

from pathlib import Path

from .constants import FIELD_OF_VIEW_MM
from .errors import XRayToCTError
from .evaluation import run_evaluation
from .inference import Reconstructor, sidecar_path, write_result
from .io import write_text, write_volume
from .models import catalog
from .phantom import head_phantom
from .progress import ProgressCallback, report, scaled
from .report import radiograph_preview, save_png, triptych

README = """XRayToCT demo: a generated phantom head (nothing here is a patient)

ct/{case}.nii.gz          the generated head CT (ground truth), HU, LPS geometry
sct/{case}.nii.gz         the SYNTHETIC CT (sCT, not for diagnosis) reconstructed by the model
                          "{model}" from the CT's AP and lateral DRRs, on the CT's own grid
sct/{case}.json           the run: model, device, time, projection-consistency score (the sCT's
                          DRRs against the input views: SSIM, PSNR), geometry
sct/{case}_<view>_input.nrrd         the DRRs the model saw (row 0 = superior; AP: patient's
                                     left on the right; lateral: face on the right)
sct/{case}_<view>_reprojection.nrrd  the sCT's DRRs at the same geometry
report/report.html        metrics (brain window L40/W40 and full range; head and whole volume)
                          of the model and of two baselines that use no radiograph (outline: a
                          constant inside the head's outline; template: an average head), and
                          axial/coronal/sagittal comparison figures. One phantom case: no
                          confidence interval, and not comparable with the README's tables
report/metrics.csv, report/summary.json   the same numbers, machine-readable
ct_brain_window.png, sct_brain_window.png   axial | coronal | sagittal previews (brain window)
drr_ap.png, drr_lateral.png                 the input DRRs, enlarged
                          every preview carries orientation letters (A/P, L/R, S/I) at its
                          edges: patient's right on the image's left (axial, coronal, AP), face
                          on the right (sagittal, lateral), superior at the top
"""

DEMO_BASELINES = ("outline", "template")
"""The baselines the demo scores beside the model: the two that need no dataset."""
DEMO_METRICS = ("ssim", "psnr", "mse", "mae_hu", "cosine")
"""The metrics of the README's tables; the per-slice SSIM is left out to pay for the baselines
(at 256^3 it costs about as much as both)."""


def default_model() -> str:
    """The first model of the bundled catalog (the catalog lists its best model first)."""
    entries = catalog()
    if not entries:
        raise XRayToCTError("no bundled model: XRayToCT/Resources/Models/models.json is empty; "
                            "name a model package (.safetensors) instead")
    return str(entries[0]["name"])


def run_demo(out: Path, *, seed: int = 0, size: int = 256, device: str = "auto",
             model: str | None = None, progress: ProgressCallback | None = None) -> dict[str, Path]:
    """Run the whole chain on a phantom of ``size``^3 voxels over the field of view
    (:data:`~XRayToCTLib.constants.FIELD_OF_VIEW_MM`, 256 mm); returns the main output paths
    (``report``, ``sct``, ``ct``, ``sidecar``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    case = f"phantom_seed{seed}"
    name = model or default_model()

    report(progress, 0.0, "generating a phantom head CT")
    # the canonical pose: the head is already where the template puts it, so the demo can skip
    # the (slow) registration step of the seed-001 protocol; `xraytoct reconstruct --ct` does it
    ct = head_phantom(size, FIELD_OF_VIEW_MM / size, seed=seed, pose=False)
    (out / "ct").mkdir(exist_ok=True)
    ct_path = write_volume(ct, out / "ct" / f"{case}.nii.gz")

    report(progress, 0.15, f"loading the model {name}")
    rec = Reconstructor(name, device=device)
    result = rec.reconstruct_ct(ct, register=False, progress=scaled(progress, 0.2, 0.65))
    (out / "sct").mkdir(exist_ok=True)
    sct_path = out / "sct" / f"{case}.nii.gz"
    write_result(result, sct_path)

    report(progress, 0.65, "metrics against the phantom CT")
    # the name the user gave (or the catalog's), not the architecture; with the baselines that
    # need no dataset, so the numbers have a yardstick
    paths = run_evaluation(out / "report", [out / "sct"], out / "ct", names=[name],
                           baselines=DEMO_BASELINES, metrics=DEMO_METRICS,
                           progress=scaled(progress, 0.65, 0.95))

    report(progress, 0.95, "writing previews")
    save_png(triptych(ct, 0.0, 80.0), out / "ct_brain_window.png")
    save_png(triptych(result.sct, 0.0, 80.0), out / "sct_brain_window.png")
    hi = max(float(r.array.max()) for r in result.drrs.values())
    for view, rad in result.drrs.items():
        save_png(radiograph_preview(rad.array, view, 0.0, hi), out / f"drr_{view}.png")
    write_text(out / "README.txt", README.format(case=case, model=name))
    report(progress, 1.0, "done")
    return {"report": paths["report"], "sct": sct_path, "ct": ct_path,
            "sidecar": sidecar_path(sct_path)}

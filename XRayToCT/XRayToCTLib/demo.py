"""The main job on an embedded default: a phantom head CT -> seed-001 preprocessing ->
AP and lateral DRRs -> files to open (NIfTI, NRRD, JSON, PNG previews)."""
from __future__ import annotations

from pathlib import Path


from .progress import ProgressCallback, report, scaled


def run_demo(out: Path, *, seed: int = 0, size: int = 256, device: str = "auto",
             progress: ProgressCallback | None = None) -> list[Path]:
    from . import preprocess as pp
    from .drr import render_biplanar
    from .io import write_volume
    from .phantom import head_phantom
    from .report import save_png, to_uint8, triptych

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []

    report(progress, 0.0, "generating a phantom head CT")
    ct = head_phantom(size, 256.0 / size, seed=seed)
    files.append(write_volume(ct, out / "phantom_ct.nii.gz") or out / "phantom_ct.nii.gz")

    report(progress, 0.35, "preprocessing (seed-001 protocol)")
    # the phantom is generated in the template's canonical pose: no registration needed
    res = pp.preprocess_ct(ct, None, register=False, progress=scaled(progress, 0.35, 0.6))
    files.append(write_volume(res.volume, out / "ct_256_1mm.nii.gz") or out / "ct_256_1mm.nii.gz")
    files.append(write_volume(res.target, out / "target_128.nii.gz") or out / "target_128.nii.gz")

    report(progress, 0.6, "rendering AP and lateral DRRs")
    drrs = render_biplanar(res.volume, device=device)
    from .cli import _write_drrs
    _write_drrs(drrs, out, {"ct": "ct_256_1mm.nii.gz", "backend": "torch"})
    files += [out / "ap.nrrd", out / "lateral.nrrd", out / "geometry.json"]

    report(progress, 0.85, "writing previews")
    hi = max(float(r.array.max()) for r in drrs.values())
    for view, rad in drrs.items():
        files.append(save_png(to_uint8(rad.array, 0.0, hi), out / f"drr_{view}.png"))
    files.append(save_png(triptych(res.volume, 0.0, 80.0), out / "ct_brain_window.png"))
    files.append(save_png(triptych(res.volume, -450.0, 1550.0), out / "ct_bone_window.png"))
    (out / "README.txt").write_text(
        "XRayToCT demo (synthetic phantom head; nothing here is a patient)\n"
        "phantom_ct.nii.gz    the generated head CT, HU, LPS geometry\n"
        "ct_256_1mm.nii.gz    after the seed-001 preprocessing: 256^3 at 1 mm, [-1000, 1000] HU\n"
        "target_128.nii.gz    the 128^3 training/evaluation target\n"
        "ap.nrrd, lateral.nrrd  DRRs (line integral of attenuation / 10, Plastimatch units);\n"
        "                     row 0 = superior; AP: patient's left on the right; lateral:\n"
        "                     source on the patient's right, face on the right\n"
        "geometry.json        the projection geometry of both views (LPS mm)\n"
        "*.png                previews (axial | coronal | sagittal; brain window L40/W80 for\n"
        "                     display, bone window L550/W2000)\n")
    files.append(out / "README.txt")
    report(progress, 1.0, "done")
    return files

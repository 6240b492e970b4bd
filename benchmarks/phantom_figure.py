"""The comparison figure docs/phantom_vs_real.png: phantom heads next to the real head CTs of
``../shared/data/head_ct``, axial / coronal / sagittal, at the brain window for viewing
(L40/W80), the seed papers' brain window (L40/W40) and a bone window (L550/W2000).

    .venv/bin/python benchmarks/phantom_figure.py [--out docs/phantom_vs_real.png] [--seeds 0 3]

Every volume is first resampled (trilinear, through LPS) onto the same 1 mm grid centred on
the level shown, so all panels share one scale. The real CTs: the GE HiSpeed series (tilted
gantry, resampled from its slice positions; slices of 4-7 mm, so its reformats are coarse
along z) and the quarter-resolution Slicer CTHead (3.2 mm in-plane, a lower head and face).
The phantoms are generated at 1 mm with their default random pose and acquisition;
their second row shows findings (shunt, subdural haemorrhage) and hydrocephalus.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "XRayToCT"))
from XRayToCTLib import preprocess as pp  # noqa: E402
from XRayToCTLib.constants import AIR_HU  # noqa: E402
from XRayToCTLib.geometry import Grid, rotation_matrix  # noqa: E402
from XRayToCTLib.io import read_volume  # noqa: E402
from XRayToCTLib.phantom import head_phantom  # noqa: E402
from XRayToCTLib.report import orthogonal_slices, to_uint8  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "head_ct"
WINDOWS = [("L40/W80", 0.0, 80.0), ("L40/W40 (seed)", 20.0, 60.0), ("bone L550/W2000", -450.0, 1550.0)]
PANEL_MM = 220


def _panels(volume, center) -> list[np.ndarray]:
    grid = Grid.centered(center, PANEL_MM, 1.0)
    v = pp.resample_to_grid(volume, grid, default=AIR_HU)
    s = orthogonal_slices(v)
    return [s["axial"], s["coronal"], s["sagittal"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "phantom_vs_real.png"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 3])
    args = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[tuple[str, list[np.ndarray]]] = []
    if (SHARED / "ge_hispeed_tilt").is_dir():
        ge = read_volume(SHARED / "ge_hispeed_tilt")
        rows.append(("real: GE HiSpeed", _panels(ge, ge.center + (0, 5, 0))))
    if (SHARED / "slicer_ctheadaxial").is_dir():
        ch = read_volume(SHARED / "slicer_ctheadaxial", rescale=(1.0, -1024.0))
        rows.append(("real: Slicer CTHead", _panels(ch, ch.center + (0, 0, 20))))
    for i, seed in enumerate(args.seeds):
        extra = {} if i == 0 else {"findings": ["shunt", "subdural_hemorrhage"], "ventricle_scale": 2.0}
        v = head_phantom(256, 1.0, seed=seed, **extra)
        pose = v.metadata["pose"]
        # the level of the lateral ventricles in the canonical head, moved with the pose
        c = rotation_matrix(pose["rotation_deg"]) @ np.array([0.0, 10.0, 40.0]) + pose["translation_mm"]
        label = f"phantom seed {seed}" + (", shunt+SDH, ventr. x2" if extra else "")
        rows.append((label, _panels(v, c)))
        c2 = rotation_matrix(pose["rotation_deg"]) @ np.array([0.0, 10.0, -5.0]) + pose["translation_mm"]
        if i == 0:
            rows.append((f"phantom seed {seed}, lower level", _panels(v, c2)))
    if (SHARED / "ge_hispeed_tilt").is_dir():
        rows.insert(1, ("real: GE HiSpeed, lower level", _panels(ge, ge.center + (0, 5, -25))))

    ncol = 3 * len(WINDOWS)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(ncol * 1.45, len(rows) * 1.55), dpi=110)
    for r, (label, panels) in enumerate(rows):
        for w, (wname, lo, hi) in enumerate(WINDOWS):
            for p, (pname, img) in enumerate(zip(("axial", "coronal", "sagittal"), panels)):
                ax = axes[r, w * 3 + p]
                ax.imshow(to_uint8(img, lo, hi), cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"{pname}\n{wname}", fontsize=6)
        axes[r, 0].set_ylabel(label, fontsize=5.5)
    fig.tight_layout(pad=0.2, w_pad=0.1, h_pad=0.3, rect=(0, 0.02, 1, 1))
    fig.text(0.5, 0.004, "XRayToCT phantom heads (synthetic) vs real head CTs, same 1 mm scale "
             "(benchmarks/phantom_figure.py)", ha="center", fontsize=7)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

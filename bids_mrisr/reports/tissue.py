"""Do the experts specialise? Mean gate per tissue class, from registered MNI152 priors.

The MoEDiff-SR teacher writes one gating map per expert. Averaging each map over grey matter,
white matter and the rest of the head (weighted by prior probabilities) shows whether the
experts split the anatomy between them or all do the same thing. Priors: TemplateFlow's
MNI152NLin2009cAsym GM/WM maps when ``TEMPLATEFLOW_HOME`` holds them, else nilearn's bundled
MNI152 maps (offline either way), registered to the super-resolved image with a SimpleITK
affine (Mattes mutual information, two resolutions): coarse, but tissue means need no more.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

TEMPLATEFLOW_TEMPLATE = "MNI152NLin2009cAsym"
TISSUES = ("GM", "WM", "rest of head")


@dataclass(frozen=True)
class TissuePriors:
    source: str
    """Which template was used, said in the report."""
    t1: nib.Nifti1Image
    gm: nib.Nifti1Image
    wm: nib.Nifti1Image


def load_priors() -> TissuePriors:
    home = os.environ.get("TEMPLATEFLOW_HOME")
    if home:
        folder = Path(home) / f"tpl-{TEMPLATEFLOW_TEMPLATE}"
        stem = f"tpl-{TEMPLATEFLOW_TEMPLATE}_res-01"
        files = [folder / f"{stem}_T1w.nii.gz", folder / f"{stem}_label-GM_probseg.nii.gz",
                 folder / f"{stem}_label-WM_probseg.nii.gz"]
        if all(f.is_file() for f in files):
            return TissuePriors(f"TemplateFlow {TEMPLATEFLOW_TEMPLATE} (res-01) GM/WM "
                                "probability maps", *(nib.load(str(f)) for f in files))
    from nilearn.datasets import (
        load_mni152_gm_template,
        load_mni152_template,
        load_mni152_wm_template,
    )

    return TissuePriors("nilearn's bundled MNI152 (2009) GM/WM probability maps, 2 mm",
                        load_mni152_template(resolution=2),
                        load_mni152_gm_template(resolution=2),
                        load_mni152_wm_template(resolution=2))


def register_priors(subject: nib.Nifti1Image, priors: TissuePriors,
                    ) -> dict[str, np.ndarray]:
    """GM and WM prior probabilities on ``subject``'s grid (affine MNI -> subject)."""
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, image in (("subject", subject), ("t1", priors.t1), ("gm", priors.gm),
                            ("wm", priors.wm)):
            paths[name] = str(Path(tmp) / f"{name}.nii.gz")
            data = np.asanyarray(image.dataobj, dtype=np.float32)
            nib.save(nib.Nifti1Image(data, image.affine), paths[name])
        fixed = sitk.ReadImage(paths["subject"], sitk.sitkFloat32)
        moving = sitk.ReadImage(paths["t1"], sitk.sitkFloat32)
        initial = sitk.CenteredTransformInitializer(
            fixed, moving, sitk.AffineTransform(3),
            sitk.CenteredTransformInitializerFilter.MOMENTS)
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(32)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(0.1, seed=0)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-3, 100)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([4, 2])
        method.SetSmoothingSigmasPerLevel([2.0, 1.0])
        method.SetInitialTransform(initial, inPlace=False)
        transform = method.Execute(fixed, moving)
        out = {}
        for name in ("gm", "wm"):
            prior = sitk.ReadImage(paths[name], sitk.sitkFloat32)
            warped = sitk.Resample(prior, fixed, transform, sitk.sitkLinear, 0.0)
            out[name] = np.clip(sitk.GetArrayFromImage(warped).T, 0.0, 1.0)
    return out


def gate_means_by_tissue(gates: np.ndarray, head: np.ndarray, gm: np.ndarray, wm: np.ndarray,
                         names: list[str]) -> dict[str, dict[str, float]]:
    """Each expert's mean gate in GM, WM and the rest of the head (prior-weighted means)."""
    weights = {"GM": gm * head, "WM": wm * head,
               "rest of head": np.clip(1.0 - gm - wm, 0.0, 1.0) * head}
    table: dict[str, dict[str, float]] = {}
    for k, name in enumerate(names[: gates.shape[-1]]):
        gate = gates[..., k]
        table[name] = {tissue: (float((gate * w).sum() / w.sum()) if w.sum() > 0 else float("nan"))
                       for tissue, w in weights.items()}
    return table

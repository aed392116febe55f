"""Per-subject QC report: one self-contained HTML page with its PNG figures beside it.

For each super-resolved run: input (plain cubic resampling of the raw scan onto the SR grid) and
SR mosaics side by side and in one fixed frame with a flip switch (CSS, no JavaScript), detail
crops marked on their slice, the difference SR - cubic, the uncertainty map when computed (each
colour map with its colour bar), no-reference quality figures, provenance from the sidecar, and
a methods paragraph with citations. Nothing is loaded from the network (offline browsers).
"""

from __future__ import annotations

import html
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bids_mrisr import __version__
from bids_mrisr.bids.derivatives import (
    SUPER_RESOLVED,
    nothing_restored,
    parse_volume_name,
    sidecar_path,
)
from bids_mrisr.image.resample import resample_to_resolution
from bids_mrisr.reports import figures
from bids_mrisr.runtime.atomic import atomic_write

LOGGER = logging.getLogger("bids_mrisr")

CITATIONS = {
    "moediff": "MoEDiff-SR: a Mixture of Experts-guided diffusion model for region-adaptive "
               "MRI super-resolution (code: github.com/ZWang78/MoEDiff-SR).",
    "distill": "Diffusion-based super-resolution of 1.5T MRI to 7T-like MRI with gradient "
               "nonlinearity and bias field guidance and progressive distillation "
               "(code: github.com/ZWang78/SR).",
    "nipype": "Gorgolewski K. et al. Nipype: a flexible, lightweight and extensible "
              "neuroimaging data processing framework in Python. Front. Neuroinform. 5:13 (2011).",
    "pybids": "Yarkoni T. et al. PyBIDS: Python tools for BIDS datasets. JOSS 4(40):1294 (2019).",
    "n4": "Tustison N. J. et al. N4ITK: improved N3 bias correction. IEEE TMI 29(6):1310 (2010); "
          "run through SimpleITK (Lowekamp B. C. et al., Front. Neuroinform. 7:45, 2013).",
    "mni152": "Fonov V. et al. Unbiased average age-appropriate atlases for pediatric studies. "
              "NeuroImage 54(1):313 (2011): the MNI152 2009 template and tissue priors used "
              "for the gate table.",
}

STYLE = """
body{font-family:sans-serif;max-width:1000px;margin:auto;padding:1em;color:#222}
h1{font-size:1.5em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ccc;padding:.2em .5em}
img{max-width:100%} figure{margin:0} figcaption{font-size:.85em;color:#555;text-align:center}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:8px}
.pair img{display:block;width:100%}
.flip{margin-top:.8em} .flip p{margin:.2em 0 .4em}
.flip input{position:absolute;opacity:0;pointer-events:none}
.flip label{display:inline-block;cursor:pointer;background:#eee;padding:.3em .6em;
 border-radius:4px;margin:0 .3em .4em 0}
.flip input:checked+label{background:#333;color:#fff}
.flip input:focus-visible+label{outline:2px solid #06c}
.frame{display:grid;max-width:720px} .frame img{grid-area:1/1;width:100%}
.frame .after,.flip .show-after:checked~.frame .before{visibility:hidden}
.flip .show-after:checked~.frame .after{visibility:visible}
.warn{color:#a40}
@media print{body{max-width:none}.flip{display:none}
 .pair,figure,img,table{break-inside:avoid}}
"""


@dataclass
class RunReport:
    """What the report shows of one run (paths relative to the output directory)."""

    relpath: str
    status: str
    detail: str = ""
    figures: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    restored: bool = True
    """False for a run resampled only (its input already at the target resolution)."""


HEAD_FRACTION = 0.1
"""A voxel is in the head where the input is above this fraction of its 99.5th percentile."""


def head_mask(before: np.ndarray) -> np.ndarray:
    """The head, read from the input alone: the region every report figure is computed in."""
    return before > HEAD_FRACTION * (float(np.percentile(before, 99.5)) or 1.0)


def no_reference_metrics(before: np.ndarray, after: np.ndarray, axis: int | None,
                         ) -> dict[str, float]:
    """Edge sharpness gain along the restored axis and a noise estimate, in the head.

    Sharpness: mean absolute gradient along the restored axis (SR over cubic). Noise: median
    absolute deviation of the second difference, relative to the head's median intensity.
    """
    head = head_mask(before)
    ax = 2 if axis is None else axis
    grad_b = np.abs(np.diff(before, axis=ax))
    grad_a = np.abs(np.diff(after, axis=ax))
    mask = np.take(head, np.arange(head.shape[ax] - 1), axis=ax)
    sharp = float(grad_a[mask].mean() / max(grad_b[mask].mean(), 1e-12)) if mask.any() else 1.0
    lap = np.diff(after, n=2, axis=(ax + 1) % 3)
    lmask = np.take(head, np.arange(1, head.shape[(ax + 1) % 3] - 1), axis=(ax + 1) % 3)
    level = float(np.median(after[head])) if head.any() else 1.0
    noise = float(np.median(np.abs(lap[lmask] - np.median(lap[lmask])))) if lmask.any() else 0.0
    return {"sharpness_gain": sharp, "relative_noise": noise / max(level, 1e-12)}


def cubic_of_input(input_file: Path, like: nib.Nifti1Image) -> np.ndarray:
    """The raw scan, RAS+, cubic-resampled onto the SR grid: what a user gets without SR."""
    image = nib.as_closest_canonical(nib.load(str(input_file)))
    data = np.asanyarray(image.dataobj).astype(np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    resolution = float(like.header.get_zooms()[0])
    out, _ = resample_to_resolution(data, image.affine, resolution)
    shape = tuple(min(a, b) for a, b in zip(out.shape, like.shape[:3], strict=True))
    padded = np.zeros(like.shape[:3], np.float32)
    padded[: shape[0], : shape[1], : shape[2]] = out[: shape[0], : shape[1], : shape[2]]
    return padded


def qc_path(output_dir: Path, sr_file: Path) -> Path:
    """``sub-<label>/figures/<SR file name>_qc.json``: the run's no-reference figures."""
    subject = sr_file.relative_to(output_dir).parts[0]
    name = sr_file.name.replace(".nii.gz", "").replace(".json", "")
    return output_dir / subject / "figures" / f"{name}_qc.json"


def build_run_figures(output_dir: Path, input_file: Path, sr_file: Path, stem: str,
                      ) -> RunReport:
    """Figures and metrics of one run: super-resolved, or resampled only (an input already at
    the target resolution: no difference map or detail crops, whose colours would show only
    rounding, but the largest difference from plain cubic resampling in the input's units)."""
    sr_image = nib.load(str(sr_file))
    after = np.asanyarray(sr_image.dataobj).astype(np.float32)
    before = cubic_of_input(input_file, sr_image)
    sidecar = json.loads(sidecar_path(sr_file).read_text())
    info = sidecar.get("SuperResolution", {})
    volume = parse_volume_name(sr_file)
    restored = volume.restored if volume is not None else not nothing_restored(info)
    axes = info.get("RestoredAxes") or [None]
    fig_dir = qc_path(output_dir, sr_file).parent  # sub-<label>/figures (validator-ignored)
    window = figures.display_window(before)
    rel = {}
    if restored:
        makers = [
            ("before", lambda p: figures.mosaic(before, p, window, title="input (cubic)")),
            ("after", lambda p: figures.mosaic(after, p, window, title="super-resolved")),
            ("difference", lambda p: figures.difference_mosaic(before, after, p)),
            ("detail", lambda p: figures.detail_crops(before, after, axes[0], p, window)),
        ]
    else:  # before and after are the same picture: one mosaic, no map of rounding
        makers = [("after", lambda p: figures.mosaic(after, p, window,
                                                     title="output (resampled only)"))]
    for key, make in makers:
        path = fig_dir / f"{stem}_{key}.png"
        make(path)
        rel[key] = path.relative_to(output_dir).as_posix()
    for stale in ("before", "difference", "detail"):  # a run written as SR by an earlier version
        if stale not in rel:
            (fig_dir / f"{stem}_{stale}.png").unlink(missing_ok=True)
    std_file = volume.uncertainty_path if volume is not None else None
    if std_file is not None and std_file.is_file():
        std = np.asanyarray(nib.load(str(std_file)).dataobj).astype(np.float32)
        path = fig_dir / f"{stem}_uncertainty.png"
        figures.uncertainty_mosaic(std, path)
        rel["uncertainty"] = path.relative_to(output_dir).as_posix()
    gates_file = volume.gates_path if volume is not None else None
    gate_means: dict[str, float] = {}
    tissue_table = None
    if gates_file is not None and gates_file.is_file():
        gates = np.asanyarray(nib.load(str(gates_file)).dataobj).astype(np.float32)
        head = head_mask(before)
        names = info.get("ExpertNames") or [f"expert{k}" for k in range(gates.shape[-1])]
        for k, name in enumerate(names[: gates.shape[-1]]):
            path = fig_dir / f"{stem}_gate-{k}.png"
            figures.gate_mosaic(gates[..., k], path, name, after, window)
            rel[f"gate-{name}"] = path.relative_to(output_dir).as_posix()
            gate_means[name] = float(gates[..., k][head].mean()) if head.any() else 0.0
        tissue_table = _gates_by_tissue(sr_image, gates, head, names)
    metrics = no_reference_metrics(before, after, axes[0])
    metrics["max_abs_difference"] = float(np.abs(after - before).max()) if after.size else 0.0
    metrics["input_p99_5"] = float(np.percentile(before, 99.5)) if before.size else 0.0
    metrics.update({f"mean gate in head: {k}": v for k, v in gate_means.items()})
    if tissue_table is not None:
        metrics["gate_by_tissue"] = tissue_table
    qc = {**metrics, "seconds": info.get("Seconds"), "model": info.get("Model"),
          "restored": restored}
    qc_file = qc_path(output_dir, sr_file)
    atomic_write(qc_file, lambda tmp: tmp.write_text(json.dumps(qc, indent=2)))
    return RunReport(relpath=sr_file.relative_to(output_dir).as_posix(), status="ok",
                     figures=rel, metrics=metrics, provenance=info, restored=restored)


def _gates_by_tissue(sr_image: nib.Nifti1Image, gates: np.ndarray, head: np.ndarray,
                     names: list[str]) -> dict[str, Any] | None:
    """Each expert's mean gate per tissue class; None (with a warning) if registration fails."""
    from bids_mrisr.reports.tissue import gate_means_by_tissue, load_priors, register_priors

    priors = load_priors()
    try:
        on_subject = register_priors(sr_image, priors)
    except RuntimeError as err:  # ITK: an image it cannot register (e.g. a sheared affine)
        LOGGER.warning("gate table by tissue skipped: %s", str(err).splitlines()[-1])
        return None
    return {"priors": priors.source,
            "experts": gate_means_by_tissue(gates, head, on_subject["gm"], on_subject["wm"],
                                            list(names))}


def _tissue_table(table: dict[str, Any]) -> str:
    from bids_mrisr.reports.tissue import TISSUES

    head = "".join(f"<th>{html.escape(t)}</th>" for t in TISSUES)
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th>"
        + "".join(f"<td>{values[t]:.3f}</td>" for t in TISSUES) + "</tr>"
        for name, values in table["experts"].items())
    return ("<h3>Mean gate per tissue class</h3>"
            f"<table><tr><th>expert</th>{head}</tr>{rows}</table>"
            "<p>Experts that specialise differ between columns; equal rows mean the router "
            f"treats all tissue alike. Priors: {html.escape(table['priors'])}, registered to "
            "this image with a SimpleITK affine (Mattes mutual information).</p>")


def _provenance_rows(info: dict[str, Any]) -> str:
    keys = ("Model", "ModelName", "WeightsSHA256", "Estimate", "Sampler", "SamplingSteps",
            "NumSamples", "Seed", "Device", "Precision", "RestoredAxes", "Planes", "Seconds",
            "AcquisitionInput", "InputConsistency", "BiasFieldRestored", "Adaptation",
            "Restored")
    rows = []
    for key in keys:
        if key in info:
            value = info[key]
            text = json.dumps(value) if isinstance(value, dict | list) else str(value)
            rows.append(f"<tr><th>{key}</th><td>{html.escape(text)}</td></tr>")
    return "\n".join(rows)


ROUNDING = 1e-3
"""A resampled-only output within this fraction of the input's 99.5th percentile of plain
cubic resampling differs from it by rounding (normalisation and its inverse, int16 storage)."""


def _resampled_section(index: int, run: RunReport) -> str:
    """A run resampled only: its output, the plain statement that nothing was restored, and
    how far it is from plain cubic resampling (no difference map: it would colour rounding)."""
    m = run.metrics
    largest = m.get("max_abs_difference", float("nan"))
    scale = m.get("input_p99_5", float("nan"))
    return "\n".join([
        f'<section id="run-{index}"><h2>{html.escape(run.relpath)}</h2>',
        '<p class="resampled"><strong>Resampled only: nothing was restored.</strong> The input '
        "is already sampled at the target resolution, so no super-resolution ran. This volume "
        "is the input reoriented to RAS+ and resampled onto the target grid (cubic B-spline), "
        "with the input's intensities.</p>",
        f'<h3>Output (resampled only)</h3><img src="{run.figures["after"]}" '
        'alt="resampled output mosaic">',
        "<h3>Against plain cubic resampling</h3><table>",
        "<tr><th>largest |output - cubic| (input units)</th>"
        f"<td>{largest:.4g}</td></tr>",
        f"<tr><th>99.5th percentile of the input (for scale)</th><td>{scale:.4g}</td></tr>",
        "</table><p>No difference map is shown"
        + (": the two differ by rounding only.</p>" if largest <= ROUNDING * scale else
           ".</p>"),
        f"<h3>Provenance</h3><table>{_provenance_rows(run.provenance)}</table></section>",
    ])


def _before_after(index: int, before: str, after: str) -> str:
    """Input and SR side by side (same size, one row: what a printout shows), then both in one
    fixed frame with a switch above it that flips between them without moving anything (CSS
    only: screen view, left out of print)."""
    def figure(side: str, src: str, caption: str) -> str:
        return (f'<figure class="{side}"><img src="{src}" alt="{caption} mosaic">'
                f"<figcaption>{caption}</figcaption></figure>")

    flip = f"flip-{index}"
    return "\n".join([
        f'<div class="pair" id="pair-{index}">',
        figure("before", before, "input (plain cubic resampling)"),
        figure("after", after, "super-resolved"), "</div>",
        f'<div class="flip" id="{flip}"><p>Flip in place (same frame, same size):</p>',
        f'<input type="radio" name="{flip}" id="{flip}-before" class="show-before" checked>'
        f'<label for="{flip}-before">input</label>',
        f'<input type="radio" name="{flip}" id="{flip}-after" class="show-after">'
        f'<label for="{flip}-after">super-resolved</label>',
        f'<div class="frame"><img class="before" src="{before}" alt="input, flip view">'
        f'<img class="after" src="{after}" alt="super-resolved, flip view"></div></div>',
    ])


def _run_section(index: int, run: RunReport) -> str:
    title = html.escape(run.relpath)
    if run.status != "ok" or not run.figures:
        return (f'<section id="run-{index}"><h2>{title}</h2>'
                f'<p class="warn">{html.escape(run.status)}: {html.escape(run.detail)}</p>'
                "</section>")
    if not run.restored:
        return _resampled_section(index, run)
    f = run.figures
    parts = [
        f'<section id="run-{index}"><h2>{title}</h2>',
        "<h3>Input and super-resolved</h3>",
        _before_after(index, f["before"], f["after"]),
        "<h3>Detail</h3><p>The yellow box on the full slice is where the restoration changed "
        "the image most; the crops beside it are that box, in a window of its own "
        f'intensities.</p><img src="{f["detail"]}" alt="detail crops">',
        f'<h3>Difference (SR - cubic)</h3><img src="{f["difference"]}" alt="difference">',
    ]
    if "uncertainty" in f:
        parts.append(f'<h3>Uncertainty</h3><img src="{f["uncertainty"]}" alt="uncertainty">')
    gates = [(k[len("gate-"):], v) for k, v in f.items() if k.startswith("gate-")]
    if gates:
        parts.append("<h3>Gating maps</h3>")
        parts += [f'<img src="{v}" alt="gate {html.escape(k)}">' for k, v in gates]
        if run.metrics.get("gate_by_tissue"):
            parts.append(_tissue_table(run.metrics["gate_by_tissue"]))
    m = run.metrics
    parts += [
        "<h3>No-reference quality</h3><table>",
        f"<tr><th>edge sharpness gain along the restored axis</th>"
        f"<td>{m.get('sharpness_gain', float('nan')):.3f}x</td></tr>",
        f"<tr><th>relative noise (MAD of 2nd difference)</th>"
        f"<td>{m.get('relative_noise', float('nan')):.4f}</td></tr>",
        *[f"<tr><th>{html.escape(k)}</th><td>{v:.3f}</td></tr>" for k, v in m.items()
          if k.startswith("mean gate")],
        "</table>",
        f"<h3>Provenance</h3><table>{_provenance_rows(run.provenance)}</table></section>",
    ]
    return "\n".join(parts)


def methods_text(model: str) -> str:
    used = ["nipype", "pybids", "n4"] + (["mni152"] if model == "teacher" else [])
    what = {"student": "the distilled student network of bids_mrisr (a posterior-mean 2.5D "
                       "U-Net; teacher design after MoEDiff-SR [moediff], student after "
                       "[distill])",
            "teacher": "the MoEDiff-SR teacher [moediff]",
            "interp": "cubic B-spline interpolation only"}.get(model, model)
    cites = ["moediff", "distill"] if model != "interp" else []
    text = (f"Anatomical images were super-resolved with bids_mrisr {__version__}. Each image "
            "was reoriented to RAS+, corrected for intensity non-uniformity with N4 [n4], "
            "normalised, resampled onto an isotropic grid with a cubic B-spline, and restored "
            f"with {what}; the N4 field and the intensity scale were then put back. The "
            "workflow runs on Nipype [nipype]; inputs were found with PyBIDS [pybids].")
    items = "".join(f"<li>[{key}] {html.escape(CITATIONS[key])}</li>" for key in cites + used)
    return f"<p>{html.escape(text)}</p><ul>{items}</ul>"


def write_subject_report(output_dir: Path, subject: str, runs: list[RunReport], model: str,
                         command_line: str) -> Path:
    """``OUT/sub-<label>.html``; returns its path."""
    body = [f"<h1>bids_mrisr report: sub-{html.escape(subject)}</h1>",
            "<nav><ul>"] + [f'<li><a href="#run-{i}">{html.escape(r.relpath)}</a> '
                            f"({html.escape(r.status)}"
                            f"{'' if r.restored else ', resampled only'})</li>"
                            for i, r in enumerate(runs)]
    body += ["</ul></nav>"] + [_run_section(i, r) for i, r in enumerate(runs)]
    resampled = ("<p>Images already sampled at the target resolution were reoriented and "
                 "resampled onto the target grid only; nothing was restored in them.</p>"
                 if any(r.status == "ok" and not r.restored for r in runs) else "")
    body += ['<section id="methods"><h2>Methods</h2>', methods_text(model), resampled,
             "</section>",
             '<section id="about"><h2>About</h2>',
             f"<p>Command: <code>{html.escape(command_line)}</code></p></section>"]
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>sub-{html.escape(subject)}: bids_mrisr</title><style>{STYLE}</style>"
            "</head><body>" + "\n".join(body) + "</body></html>\n")
    path = output_dir / f"sub-{subject}.html"
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path


def add_reference_section(report: Path, scores: dict[str, dict[str, float]], crops: Path,
                          model: str, reference_name: str) -> Path:
    """The demo's own check: PSNR/SSIM of cubic and SR against the reference it kept, with
    crops of the three at one place; inserted before the methods of the subject report."""
    rows = "".join(
        f"<tr><th>{html.escape(label)}</th><td>{scores[key]['psnr']:.2f} dB</td>"
        f"<td>{scores[key]['ssim']:.4f}</td></tr>"
        for key, label in (("cubic", "plain cubic resampling"),
                           ("sr", f"bids_mrisr --model {model}")))
    section = (
        '<section id="reference"><h2>Against the reference (demo)</h2>'
        f"<p>The demo degraded {html.escape(reference_name)} to thick slices; both results "
        "are scored against it in the head mask.</p>"
        f"<table><tr><th></th><th>PSNR</th><th>SSIM</th></tr>{rows}</table>"
        f'<img src="{crops.relative_to(report.parent).as_posix()}" '
        'alt="reference, cubic and super-resolved crops"></section>\n')
    page = report.read_text(encoding="utf-8")
    page = re.sub(r'<section id="reference">.*?</section>\n?', "", page, flags=re.DOTALL)
    marker = '<section id="methods">'
    page = page.replace(marker, section + marker, 1) if marker in page else page + section
    atomic_write(report, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return report


def robust_outliers(values: list[float], threshold: float = 3.5) -> list[bool]:
    """Values more than ``threshold`` robust z-scores (median/MAD) from the median."""
    arr = np.asarray(values, dtype=float)
    if arr.size < 3:
        return [False] * arr.size
    med = float(np.median(arr))
    mad = float(np.median(np.abs(arr - med))) * 1.4826 or 1e-12
    return [bool(abs(v - med) / mad > threshold) for v in arr]


def write_group_report(output_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """``OUT/group.html``: the super-resolved runs (counted, compared, outliers flagged), then
    the runs that were resampled only, listed apart (``kind`` of the rows, bids/derivatives.py)."""

    restored = [row for row in rows if row.get("kind", SUPER_RESOLVED) == SUPER_RESOLVED]
    resampled = [row for row in rows if row.get("kind", SUPER_RESOLVED) != SUPER_RESOLVED]

    def link(row: dict[str, Any]) -> str:
        subject = row["output"].split("/")[0]
        return f'<a href="{subject}.html">{html.escape(row["output"])}</a>'

    head = ("<tr><th>run</th><th>model</th><th>seconds</th><th>sharpness gain</th>"
            "<th>relative noise</th><th>flag</th></tr>")
    body = [
        f"<tr><td>{link(row)}</td>"
        f"<td>{html.escape(str(row.get('model', '')))}</td>"
        f"<td>{html.escape(str(row.get('seconds', '')))}</td>"
        f"<td>{html.escape(str(row.get('sharpness_gain', '')))}</td>"
        f"<td>{html.escape(str(row.get('relative_noise', '')))}</td>"
        f'<td class="warn">{html.escape(row.get("flag", ""))}</td></tr>'
        for row in restored]
    parts = ["<h1>bids_mrisr group report</h1>",
             f'<section id="super-resolved"><h2>{len(restored)} super-resolved run(s)</h2>']
    if restored:
        parts.append("<p>Each run is compared with the other super-resolved runs of the same "
                     "model: outliers are more than 3.5 robust z-scores from their median "
                     "sharpness gain or noise (three runs or more).</p>"
                     f"<table>{head}{''.join(body)}</table>")
    else:
        parts.append("<p>No run needed restoring.</p>")
    parts.append("</section>")
    if resampled:
        rows_html = "".join(
            f"<tr><td>{link(row)}</td>"
            f"<td>{html.escape(str(row.get('resolution_mm', '')))}</td>"
            f"<td>{html.escape(str(row.get('sources', '')))}</td></tr>" for row in resampled)
        parts.append(
            f'<section id="resampled-only"><h2>{len(resampled)} run(s) resampled only</h2>'
            "<p>These inputs are already sampled at the target resolution: nothing was "
            "restored, they were reoriented and resampled onto the target grid. They are not "
            "counted as super-resolved nor compared with the runs above.</p>"
            "<table><tr><th>run</th><th>resolution (mm)</th><th>source</th></tr>"
            f"{rows_html}</table></section>")
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>bids_mrisr group report</title><style>{STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
    path = output_dir / "group.html"
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path

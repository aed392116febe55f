"""Ablation of per-scan adaptation: which of its parts earns what, on held-out real scans.

``quality.py`` runs the whole app once per setting; this script varies the knobs of
:class:`bids_mrisr.sr.adapt.AdaptOptions` (steps, learning rate, crop, keep_pretrained,
match_noise, a given slice-profile shape) without starting the app for each. For each volume and
simulated acquisition it:

1. makes the truth and the low-resolution NIfTI exactly as ``quality.py`` does;
2. preprocesses it with the app's own chain (``image.preprocess.preprocess_file``: RAS+, N4,
   normalisation, target grid), once;
3. adapts the weights the app picks (the shipped student, or its ``box/`` variant for a scan
   read as box-profiled) with each setting (``sr.adapt.adapt_model``), super-resolves with the
   engine (``sr.inference.run_loaded``), pulls the estimate toward the input slices as the app
   does (``sr.refinement.make_consistent``) and maps the result back to the input's
   intensities with the app's own ``interfaces.superres.restore_input_intensities``;
4. scores it against the truth beside plain cubic resampling (``score_in_head``).

With ``{"steps": 0}`` (no adaptation) and the default setting it reproduces the app's
``student`` and ``student+adapt`` rows of ``quality.py`` to 0.01 dB (the network is told the
acquisition as the app tells it). Settings come as JSON:
``--settings '{"default": {}, "no-noise": {"match_noise": false}}'``.

A setting's ``"pairs"`` key measures what adaptation could reach with better pairs than the
scan's own, which only a benchmark can build because they need the truth (in the scan's
normalised intensities):

- ``scan`` (default): the app's pairs, the scan's in-plane axes degraded;
- ``truth-thick``: the truth degraded exactly as the scan was, along the real thick axis; the
  input is the scan itself, so this is the memorisation bound of the test case;
- ``truth-inplane``: the truth's in-plane axes degraded as the scan was, noise included: the
  scan's own pairs had its in-plane slices been sharp along the thick axis too;
- ``blurred-truth-inplane``: the same from the truth first blurred along the thick axis (no
  noise), which is what the scan's in-plane slices are.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_mrisr.image.normalize import Normalisation
from bids_mrisr.image.preprocess import Preprocessed, preprocess_file
from bids_mrisr.image.reorient import ras_zooms
from bids_mrisr.interfaces.superres import bias_on_grid, restore_input_intensities
from bids_mrisr.sr.acquisition_input import PassAcquisition, read_scan, told_acquisitions
from bids_mrisr.sr.adapt import AdaptOptions, adapt_model
from bids_mrisr.sr.checkpoint import LoadedCheckpoint, load_checkpoint
from bids_mrisr.sr.degrade import Degradation
from bids_mrisr.sr.geometry import blurred_axes
from bids_mrisr.sr.inference import run_loaded
from bids_mrisr.sr.networks import ModelConfig
from bids_mrisr.sr.options import SROptions
from bids_mrisr.sr.pairs import PairSampler, simulate_cubic
from bids_mrisr.sr.refinement import make_consistent
from bids_mrisr.sr.training.evaluate import score_in_head
from bids_mrisr.sr.variants import weights_for_geometry, weights_for_profile
from bids_mrisr.sr.weights import default_weights

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # quality.py beside it, also when loaded by path (the tests)
from quality import (  # noqa: E402 (after the path)
    DEFAULT_DATA,
    HELD_OUT,
    lowres_image,
    plain_resample,
    truth_volume,
)

PAIRS = ("scan", "truth-thick", "truth-inplane", "blurred-truth-inplane")


def truth_pairs(kind: str, truth: np.ndarray, scan: np.ndarray, params: Degradation,
                config: ModelConfig, options: AdaptOptions) -> PairSampler:
    """Adaptation pairs built from the truth (``truth`` and ``scan`` on one grid, in the scan's
    normalised intensities); see the module docstring for the kinds."""
    thick, rng = params.axis, np.random.default_rng(options.seed)
    common = dict(crop=options.crop, seed=options.seed, remap_intensities=False)
    if kind == "truth-thick":
        return PairSampler([truth], config.context_slices, config.residual_scale,
                           pool=[(truth, scan, params)], **common)
    source = truth
    if kind == "blurred-truth-inplane":  # no noise: the scan's own comes with the pairs below
        source = simulate_cubic(truth, dataclasses.replace(params, noise_fraction=0.0), rng)
    pool = []
    for axis in (a for a in range(3) if a != thick):
        inplane = dataclasses.replace(params, axis=axis)
        cubic = simulate_cubic(source, inplane, rng)
        pool.append((source, np.asarray(cubic, dtype=np.float32), inplane))
    return PairSampler([source], config.context_slices, config.residual_scale,
                       slice_axis=thick, pool=pool, **common)


def normalised_truth(truth: np.ndarray, volume: np.ndarray, norm: Normalisation,
                     bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The truth in the scan's normalised intensities (N4 field divided out), and the scan,
    both cut to the extent they share (as ``score_in_head`` compares them)."""
    cut = tuple(slice(0, min(a, b)) for a, b in zip(truth.shape, volume.shape, strict=True))
    mapped = (truth[cut] / bias[cut] - norm.offset) / norm.scale
    return (np.ascontiguousarray(mapped, dtype=np.float32),
            np.ascontiguousarray(volume[cut], dtype=np.float32))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--subjects", nargs="+", default=list(HELD_OUT))
    p.add_argument("--factor", type=float, default=3.0)
    p.add_argument("--axes", "--axis", type=int, nargs="+", default=[2], choices=(0, 1, 2),
                   help="thick axes to simulate, one case per axis and profile")
    p.add_argument("--profiles", nargs="+", default=["gaussian", "box"])
    p.add_argument("--noise", type=float, default=0.02)
    p.add_argument("--settings", default='{"none": {"steps": 0}, "default": {}}',
                   help="JSON object: name -> AdaptOptions overrides ({'steps': 0}: none)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", type=Path, default=HERE / "results" / "adapt_ablation.json")
    return p


class AppWeights:
    """The shipped student's checkpoints, chosen per scan as the app's engine chooses them
    (``sr.inference.run_model``), each loaded once."""

    def __init__(self) -> None:
        self.root = default_weights("student")
        self.loaded: dict[Path, LoadedCheckpoint] = {}

    def for_scan(self, axes: tuple[int, ...], told_box: bool) -> LoadedCheckpoint:
        weights = weights_for_profile(self.root, weights_for_geometry(self.root, axes), told_box)
        if weights not in self.loaded:
            self.loaded[weights] = load_checkpoint(weights, "cpu")
        return self.loaded[weights]


@dataclasses.dataclass
class Case:
    """One simulated scan, preprocessed by the app's chain, with what every setting reuses."""

    subject: str
    params: Degradation
    truth: np.ndarray
    volume: np.ndarray
    pre: Preprocessed
    grid: nib.Nifti1Image
    options: SROptions
    acquisition: PassAcquisition
    ckpt: LoadedCheckpoint
    norm: Normalisation
    cubic: dict

    @functools.cached_property
    def truth_and_scan(self) -> tuple[np.ndarray, np.ndarray]:
        """The truth in the scan's normalised intensities, and the scan (once per case)."""
        return normalised_truth(self.truth, self.volume, self.norm,
                                bias_on_grid(self.pre.bias_field, self.grid))


def prepare_case(subject: str, truth: np.ndarray, affine: np.ndarray, resolution: float,
                 params: Degradation, folder: Path, threads: int,
                 app_weights: AppWeights) -> Case:
    """Simulate the scan as ``quality.py`` does and preprocess it as the app does."""
    image = lowres_image(truth, affine, resolution, params, 0)
    folder.mkdir()
    nib.save(image, str(folder / "lr.nii.gz"))
    pre = preprocess_file(folder / "lr.nii.gz", folder / "pre", threads=threads)
    grid = nib.load(str(pre.grid_file))
    volume = np.asanyarray(grid.dataobj).astype(np.float32)
    zooms = ras_zooms(image)
    axes = blurred_axes(zooms, pre.resolution)
    options = SROptions(blurred_axes=axes, axis_factors=tuple(z / pre.resolution for z in zooms),
                        threads=threads)
    acquisition = read_scan(told_acquisitions(options)[0], volume, threads)
    return Case(subject=subject, params=params, truth=truth, volume=volume, pre=pre, grid=grid,
                options=options, acquisition=acquisition,
                ckpt=app_weights.for_scan(axes, acquisition.profile == "box"),
                norm=Normalisation.from_json(pre.params_file),
                cubic=score_in_head(plain_resample(image, resolution, 3), truth))


def score_setting(case: Case, name: str, setting: dict) -> dict:
    """Adapt the app's weights with ``setting`` (none for ``steps: 0``), run them as the app
    does and score the result against the truth; return the result row."""
    overrides = {k: v for k, v in setting.items() if k != "pairs"}
    kind = setting.get("pairs", "scan")
    start = time.perf_counter()
    model, info = case.ckpt.model, {}
    if overrides.get("steps", 1) > 0:
        adapt = AdaptOptions(**overrides)
        pairs = None
        if kind != "scan":
            mapped, scan = case.truth_and_scan
            thick = case.options.blurred_axes[0]
            pairs = truth_pairs(kind, mapped, scan, dataclasses.replace(case.params, axis=thick),
                                case.ckpt.config, adapt)
        model, info = adapt_model(case.ckpt.model, case.volume, case.acquisition, adapt,
                                  pairs=pairs)
    seconds = time.perf_counter() - start
    result = run_loaded(case.volume, model, case.ckpt.config, case.options,
                        acquisitions=(case.acquisition,))
    make_consistent(result, case.volume, case.acquisition, case.options)
    restored = restore_input_intensities(result.image, case.norm, case.pre.bias_field, case.grid)
    scores = score_in_head(restored, case.truth)
    return {"volume": case.subject, "axis": case.params.axis, "profile": case.params.profile,
            "told": case.acquisition.profile, "setting": name, "overrides": overrides,
            "pairs": kind, "gain_db": scores["psnr"] - case.cubic["psnr"],
            "ssim": scores["ssim"], "cubic": case.cubic, "adapt_seconds": seconds,
            "adaptation": info}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = json.loads(args.settings)
    for name, setting in settings.items():  # refused before any case is simulated
        if setting.get("pairs", "scan") not in PAIRS:
            raise SystemExit(f"setting {name}: pairs must be one of {PAIRS}")
    app_weights = AppWeights()
    rows = []
    print(f"{'volume':<10} {'axis':>4} {'profile':<9} {'setting':<16} {'gain':>7} {'SSIM':>7} "
          f"{'s':>6}")
    with tempfile.TemporaryDirectory(prefix="mrisr-ablation-") as scratch:
        for subject in args.subjects:  # its truth read once, for all its axes and profiles
            anat = args.data / f"sub-{subject}" / "anat"
            truth, affine, resolution = truth_volume(
                sorted(anat.glob(f"sub-{subject}*_T1w.nii*"))[0])
            for axis, profile in itertools.product(args.axes, args.profiles):
                params = Degradation(axis=axis, factor=args.factor, profile=profile,
                                     noise_fraction=args.noise)
                case = prepare_case(subject, truth, affine, resolution, params,
                                    Path(scratch) / f"{subject}-{axis}-{profile}", args.threads,
                                    app_weights)
                for name, setting in settings.items():
                    row = score_setting(case, name, setting)
                    rows.append(row)
                    print(f"{subject:<10} {axis:>4} {profile:<9} {name:<16} "
                          f"{row['gain_db']:+7.2f} {row['ssim']:7.4f} "
                          f"{row['adapt_seconds']:6.1f}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"command": vars(args) | {"data": str(args.data),
                                                                "output": str(args.output)},
                                       "rows": rows}, indent=1, default=str))
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

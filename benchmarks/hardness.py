"""What makes a scan hard: the student's gain over cubic set beside properties of each truth.

Issue: unseen scans gain from +0.9 to +3.4 dB over cubic at 3x. Before tuning, this measures
on every 1 mm volume of ds-real the properties that could explain it, from the truth alone
(no model involved), and joins them with the gains that ``benchmarks/quality.py`` measured
through the app for one case (``--case``, default 3x thick axis 2, Gaussian, 2 % noise):

- ``truth_noise``: the truth's own in-plane noise (robust Laplacian estimate in the head,
  ``sr.acquisition.noise_sigma``) as a fraction of the scoring peak. Neither cubic nor a
  posterior-mean network can predict it, so it caps the PSNR any method can reach;
- ``noise_ceiling_db``: that cap, the PSNR of a perfect noise-free estimate against the
  noisy truth (20 log10(peak / noise));
- ``headroom_db``: that cap minus cubic's PSNR, and ``headroom_used``: the gain's share of it;
- ``detail_lost``: the share of the truth's in-head variance that the case's degradation
  removes without added noise (what there is to restore);
- ``head_fraction``, ``zero_background``: the field of view's share of head (neck and air
  in whole-head scans) and of exact zeros (skull-stripped or masked volumes);
- ``levels``: distinct intensity values of the stored file (8-bit volumes have <= 256);
- ``voxel_mm``, the contrast, and whether the shipped student trained on the volume.

Prints a table and the rank correlation of each property with the gain; writes JSON.
Not a timed test; it reads ``../shared/data/ds-real`` (or ``--data``) and writes nothing there.

Example::

    python benchmarks/hardness.py --results benchmarks/results/quality-*.json \\
        --output benchmarks/results/hardness.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.quality import truth_file, truth_volume  # noqa: E402
from bids_mrisr.sr.acquisition import noise_sigma  # noqa: E402
from bids_mrisr.sr.degrade import Degradation  # noqa: E402
from bids_mrisr.sr.pairs import simulate_cubic  # noqa: E402
from bids_mrisr.sr.training.evaluate import scoring_mask  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ds-real"
PROPERTIES = ("truth_noise", "noise_ceiling_db", "headroom_db", "detail_lost", "head_fraction",
              "zero_background", "levels", "voxel_mm", "cubic_psnr")


def case_degradation(row: dict) -> Degradation:
    """The single thick axis, factor and profile of a ``quality.py`` case, as its JSON records
    them (noise is left out: the properties describe the truth)."""
    recorded = row["degradation"]
    if recorded.get("isotropic"):
        raise SystemExit(f"case {row['case']}: every axis coarse; choose a single-axis --case")
    return Degradation(axis=recorded["axis"], factor=recorded["factor"],
                       profile=recorded["profile"], thickness_ratio=recorded["thickness_ratio"])


def properties(path: Path, params: Degradation) -> dict[str, float]:
    """The truth's properties (module docstring), in the units the scores use."""
    truth, _, resolution = truth_volume(path)
    head, top = scoring_mask(truth)
    scaled = truth / top
    in_plane = [a for a in range(3) if a != params.axis]
    sigma = noise_sigma(scaled, params.axis)  # in-plane Laplacian, head above 0.1 of peak
    cubic = simulate_cubic(scaled, params, np.random.default_rng(0))
    shape = tuple(min(a, b) for a, b in zip(cubic.shape, scaled.shape, strict=True))
    crop = tuple(slice(0, n) for n in shape)
    inside = head[crop]
    lost = float(np.sum((scaled[crop] - cubic[crop])[inside] ** 2))
    spread = float(np.sum((scaled[crop][inside] - scaled[crop][inside].mean()) ** 2))
    stored = np.asanyarray(nib.load(str(path)).dataobj)
    return {
        "truth_noise": round(sigma, 5),
        "noise_ceiling_db": round(20 * math.log10(1.0 / sigma), 2) if sigma > 0 else None,
        "detail_lost": round(lost / spread, 5),
        "head_fraction": round(float(head.mean()), 4),
        "zero_background": round(float(np.mean(truth == 0)), 4),
        "levels": int(np.unique(stored).size),
        "voxel_mm": round(float(resolution), 3),
        "in_plane_axes": in_plane,
    }


def gains(results: list[Path], case: str, method: str) -> dict[tuple[str, str], dict]:
    """(volume, contrast) -> the method's gain, cubic PSNR, training flag and the case's
    degradation."""
    found: dict[tuple[str, str], dict] = {}
    for path in results:
        data = json.loads(path.read_text())
        for row in data.get("cases", []):
            scored = row["methods"].get(method)
            if row["case"] != case or scored is None:
                continue
            found[(row["volume"], row.get("contrast", "T1w"))] = {
                "gain_db": round(scored["gain_db"], 3),
                "cubic_psnr": round(row["methods"]["cubic"]["psnr"], 2),
                "set": row.get("set", "other"),
                "seen_in_training": bool(scored.get("seen_in_training")),
                "source": str(path),
                "degradation": case_degradation(row),
            }
    return found


def rank_correlations(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Spearman's rho of each property with the gain over the volumes that have both (none
    for a property or gain that is the same on every volume)."""
    out = {}
    for name in PROPERTIES:
        pairs = [(r[name], r["gain_db"]) for r in rows if r.get(name) is not None]
        if len(pairs) >= 4 and all(len(set(column)) > 1 for column in zip(*pairs, strict=True)):
            rho, p = stats.spearmanr(*zip(*pairs, strict=True))
            out[name] = {"rho": round(float(rho), 3), "p": round(float(p), 4), "n": len(pairs)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--results", type=Path, nargs="+", required=True,
                        help="benchmarks/quality.py JSON files holding the case's gains")
    parser.add_argument("--case", default="f3a2gn20", help="quality.py case id (default: 3x, "
                        "thick axis 2, Gaussian, 2 %% noise)")
    parser.add_argument("--method", default="student")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for (volume, contrast), gain in sorted(gains(args.results, args.case, args.method).items()):
        path = truth_file(args.data, volume, contrast)
        if path is None:
            print(f"{volume} {contrast}: no truth under {args.data}, skipped", file=sys.stderr)
            continue
        params = gain.pop("degradation")
        row = {"volume": volume, "contrast": contrast, **gain, **properties(path, params)}
        if row["noise_ceiling_db"] is not None:
            row["headroom_db"] = round(row["noise_ceiling_db"] - row["cubic_psnr"], 2)
            row["headroom_used"] = round(row["gain_db"] / row["headroom_db"], 3)
        rows.append(row)
    header = (f"{'volume':<10} {'contr':<5} {'set':<10} {'seen':<5} {'gain':>6} {'cubic':>6} "
              f"{'noise':>7} {'ceil dB':>7} {'room':>6} {'used':>5} {'lost':>7} {'head':>6} "
              f"{'zero':>6} {'levels':>7} {'mm':>5}")
    print(header)
    for r in sorted(rows, key=lambda r: r["gain_db"]):
        ceiling = (f"{r['noise_ceiling_db']:7.2f} {r['headroom_db']:6.2f} "
                   f"{r['headroom_used']:5.2f}" if r["noise_ceiling_db"] else f"{'-':>20}")
        print(f"{r['volume']:<10} {r['contrast']:<5} {r['set']:<10} "
              f"{'yes' if r['seen_in_training'] else 'no':<5} {r['gain_db']:+6.2f} "
              f"{r['cubic_psnr']:6.2f} {r['truth_noise']:7.4f} {ceiling} "
              f"{r['detail_lost']:7.4f} {r['head_fraction']:6.3f} {r['zero_background']:6.3f} "
              f"{r['levels']:7d} {r['voxel_mm']:5.2f}")
    correlations = rank_correlations(rows)
    print("\nSpearman rank correlation with the gain (small n: indicative only)")
    for name, c in correlations.items():
        print(f"  {name:<17} rho {c['rho']:+.2f}  p {c['p']:.3f}  n {c['n']}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({
            "command": " ".join(["benchmarks/hardness.py", *(argv or sys.argv[1:])]),
            "case": args.case, "method": args.method, "volumes": rows,
            "spearman": correlations}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

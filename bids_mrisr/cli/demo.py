"""``bids_mrisr demo OUT``: build the embedded demo dataset and run the whole product on it."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bids_mrisr.errors import ExitCode
from bids_mrisr.sr.options import METHODS

LOGGER = logging.getLogger("bids_mrisr")


def app_main(argv: list[str]) -> int:
    """The BIDS-App call, with user errors turned into their exit code (logged by the app)."""
    from bids_mrisr.cli.bids_app import run_bids_app
    from bids_mrisr.errors import UserError

    try:
        return run_bids_app(argv)
    except UserError as err:
        LOGGER.error("error: %s", err)
        return int(err.code)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bids_mrisr demo",
        description="Build a one-subject demo BIDS dataset (nilearn's MNI152 T1 degraded to "
                    "3 mm slices) under OUT/bids, then run the participant and group levels "
                    "into OUT/derivatives.")
    parser.add_argument("out", type=Path, help="folder for the demo dataset and its outputs")
    parser.add_argument("--model", choices=METHODS, default=None,
                        help="default: student if weights are available, else interp")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="further options passed to the participant level")
    args = parser.parse_args(argv)

    from bids_mrisr.bids.demo import build_demo_dataset
    from bids_mrisr.sr.weights import default_weights

    root = args.out.expanduser().absolute()
    bids_dir, reference = build_demo_dataset(root)
    LOGGER.info("demo dataset written to %s (1 mm reference: %s)", bids_dir, reference)
    model = args.model or ("student" if default_weights("student") else "interp")
    if model == "interp" and args.model is None:
        LOGGER.info("no shipped student weights yet: running the demo with --model interp")
    output_dir = root / "derivatives"
    common = [str(bids_dir), str(output_dir)]
    code = app_main([*common, "participant", "--model", model, "-w", str(root / "work"),
                     *args.extra])
    if code != ExitCode.OK:
        return code
    code = app_main([*common, "group"])
    if code == ExitCode.OK:
        _print_scores(bids_dir, output_dir, reference, model)
        print(f"\nDemo finished: outputs in {output_dir}")
    return code


def _print_scores(bids_dir: Path, output_dir: Path, reference: Path, model: str) -> None:
    """PSNR/SSIM of plain cubic and of the app's output against the 1 mm reference."""
    from bids_mrisr.bids.demo import DEMO_DEGRADATION, DEMO_SUBJECT, reference_volumes
    from bids_mrisr.bids.derivatives import output_volumes
    from bids_mrisr.reports.figures import display_window, side_by_side_crops
    from bids_mrisr.reports.html import add_reference_section
    from bids_mrisr.sr.training.evaluate import score_in_head

    outputs = [v.path for v in output_volumes(output_dir)
               if v.restored and v.path.parent == output_dir / f"sub-{DEMO_SUBJECT}" / "anat"]
    inputs = sorted((bids_dir / f"sub-{DEMO_SUBJECT}" / "anat").glob("*_T1w.nii.gz"))
    if len(outputs) != 1 or len(inputs) != 1:
        LOGGER.warning("cannot compare with the reference: expected one input and one output")
        return
    truth, cubic, sr = reference_volumes(outputs[0], inputs[0], reference)
    scores = {"cubic": score_in_head(cubic, truth), "sr": score_in_head(sr, truth)}
    report = output_dir / f"sub-{DEMO_SUBJECT}.html"
    if report.is_file():
        crops = side_by_side_crops(
            [truth, cubic, sr], ["1 mm reference", "plain cubic", f"bids_mrisr ({model})"],
            DEMO_DEGRADATION.axis,
            output_dir / f"sub-{DEMO_SUBJECT}" / "figures" / "demo_reference.png",
            display_window(truth))
        add_reference_section(report, scores, crops, model, reference.name)
    print(f"\nAgainst the 1 mm reference ({reference.name}; head mask):")
    for name, label in (("cubic", "plain cubic resampling"), ("sr", f"bids_mrisr --model {model}")):
        print(f"  {label:<32} PSNR {scores[name]['psnr']:6.2f} dB   SSIM "
              f"{scores[name]['ssim']:.4f}")
    print("  (the MNI152 template is among the training volumes of the shipped student: "
          "held-out figures are in docs/model-card.md)")
    if report.is_file():
        print(f"QC report: {report}")

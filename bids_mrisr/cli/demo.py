"""``bids_mrisr demo OUT``: build the embedded demo dataset and run the whole product on it."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bids_mrisr.cli.exitcodes import ExitCode

LOGGER = logging.getLogger("bids_mrisr")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bids_mrisr demo",
        description="Build a one-subject demo BIDS dataset (nilearn's MNI152 T1 degraded to "
                    "3 mm slices) under OUT/bids, then run the participant and group levels "
                    "into OUT/derivatives.")
    parser.add_argument("out", type=Path, help="folder for the demo dataset and its outputs")
    parser.add_argument("--model", choices=("student", "teacher", "interp"), default=None,
                        help="default: student if weights are available, else interp")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="further options passed to the participant level")
    args = parser.parse_args(argv)

    from bids_mrisr.cli.run import main as app_main
    from bids_mrisr.demo import build_demo_dataset
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
        print(f"\nDemo finished: outputs in {output_dir}")
    return code

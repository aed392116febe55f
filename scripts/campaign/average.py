"""Average campaign snapshots into one checkpoint (bids_mrisr.sr.training.averaging).

usage: python scripts/campaign/average.py OUT SNAPSHOT SNAPSHOT [...] [--weights W W ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bids_mrisr.sr.training.averaging import average_checkpoints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("snapshots", type=Path, nargs="+")
    parser.add_argument("--weights", type=float, nargs="+")
    args = parser.parse_args()
    digest = average_checkpoints(args.snapshots, args.output, args.weights)
    print(f"{args.output}: sha256 {digest}")


if __name__ == "__main__":
    main()

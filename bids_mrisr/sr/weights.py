"""Where the shipped default weights live; loaded from the package, never downloaded."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_WEIGHTS = Path(__file__).resolve().parent.parent / "data" / "weights"
ENV_VAR = "BIDS_MRISR_WEIGHTS_DIR"


def default_weights(model: str) -> Path | None:
    """``$BIDS_MRISR_WEIGHTS_DIR/<model>`` or the package's ``data/weights/<model>``, if present."""
    roots = [Path(os.environ[ENV_VAR])] if os.environ.get(ENV_VAR) else []
    roots.append(PACKAGE_WEIGHTS)
    for root in roots:
        candidate = root / model
        if (candidate / "model.json").is_file():
            return candidate
    return None

"""The BIDS-App call itself (``bids_dir output_dir {participant,group}``) and log setup.

Kept apart from ``cli/run.py`` (which dispatches ``demo`` and ``train`` too) so that the demo can
run the app without importing its own dispatcher back.
"""

from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("bids_mrisr")


def setup_logging(verbose: int = 0) -> None:
    level = logging.DEBUG if verbose >= 2 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [bids_mrisr] %(message)s", "%H:%M:%S"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level)
    LOGGER.propagate = False


def run_bids_app(argv: list[str]) -> int:
    """Parse a BIDS-App command line and run its analysis level; raises ``UserError``."""
    from bids_mrisr.cli.cachedirs import ensure_writable_caches
    from bids_mrisr.cli.parser import build_settings

    settings = build_settings(argv)
    setup_logging(settings.verbose)
    ensure_writable_caches()  # before matplotlib (reports) and Deno (validator) start
    if settings.analysis_level == "group":
        from bids_mrisr.cli.group import run_group

        return int(run_group(settings))
    from bids_mrisr.cli.participant import run_participant

    return int(run_participant(settings, command_line=["bids_mrisr", *argv]))

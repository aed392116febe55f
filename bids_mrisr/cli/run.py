"""``bids_mrisr``: the BIDS-App entry point (exit codes in docs/usage.md).

User errors print one line and exit with a documented code; a failed run never stops the others,
and every run ends with a summary table.
"""

from __future__ import annotations

import logging
import signal
import sys

from bids_mrisr.cli.bids_app import run_bids_app, setup_logging
from bids_mrisr.errors import ExitCode, UserError
from bids_mrisr.runtime.interrupts import Interrupted
from bids_mrisr.runtime.interrupts import install as install_interrupt_handlers

LOGGER = logging.getLogger("bids_mrisr")


def _dispatch_subcommand(argv: list[str]) -> int | None:
    """``bids_mrisr demo|train|slurm ...`` live beside the BIDS-App call."""
    if not argv or (len(argv) >= 3 and argv[2] in ("participant", "group")):
        return None  # a BIDS-App call, even if the dataset folder is called "demo"
    if argv[0] == "demo":
        from bids_mrisr.cli.demo import main as demo_main

        return demo_main(argv[1:])
    if argv[0] == "train":
        from bids_mrisr.cli.train import main as train_main

        return train_main(argv[1:])
    if argv[0] == "slurm":
        from bids_mrisr.cli.slurm import main as slurm_main

        return slurm_main(argv[1:])
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        code = _dispatch_subcommand(argv)
        if code is not None:
            return code
        install_interrupt_handlers()  # train keeps its own (it saves its state first)
        return run_bids_app(argv)
    except UserError as err:
        LOGGER.error("error: %s", err)
        return int(err.code)
    except Interrupted as stop:
        LOGGER.error("interrupted (%s); rerun with the same --work-dir to resume",
                     signal.Signals(stop.signum).name)
        return stop.exit_code
    except KeyboardInterrupt:
        LOGGER.error("interrupted; rerun with the same --work-dir to resume")
        return int(ExitCode.INTERRUPTED)


if __name__ == "__main__":  # python -m bids_mrisr.cli.run (torchrun uses this form)
    sys.exit(main())

"""Keep third-party caches out of an unwritable ``HOME`` (containers, read-only clusters).

The app writes nothing into ``HOME`` itself, but two libraries it drives do, at run time:
matplotlib (report figures: ``MPLCONFIGDIR``, default ``~/.config/matplotlib`` and
``~/.cache/matplotlib``) and the Deno runtime of ``bids-validator-deno`` (``DENO_DIR``, default
``~/.cache/deno``). When the directory a variable names (or its default under ``HOME``) cannot be
written, the variable is pointed at a private directory under the temp dir instead, before either
library starts. The container image sets both variables; this is the safety net for a ``/tmp``
shared between users (Apptainer) or a plain install run with a read-only ``HOME``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

LOGGER = logging.getLogger("bids_mrisr")


def _defaults() -> dict[str, Path]:
    home = Path(os.path.expanduser("~"))
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache")
    return {"MPLCONFIGDIR": config / "matplotlib", "DENO_DIR": cache / "deno"}


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _fallback_root() -> Path:
    root = Path(tempfile.gettempdir()) / f"bids_mrisr-cache-{os.getuid()}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        if root.stat().st_uid == os.getuid() and _writable(root):
            return root
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="bids_mrisr-cache-"))


def ensure_writable_caches() -> dict[str, str]:
    """Redirect each unwritable cache variable; return the ones that were changed."""
    changed: dict[str, str] = {}
    for var, default in _defaults().items():
        current = os.environ.get(var)
        if _writable(Path(current) if current else default):
            continue
        target = _fallback_root() / default.name
        target.mkdir(parents=True, exist_ok=True)
        os.environ[var] = changed[var] = str(target)
        LOGGER.debug("%s: %s is not writable; using %s", var, current or default, target)
    return changed

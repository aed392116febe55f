"""The atomic-write helpers: write a temporary file beside the target, then rename it.

Readers (a concurrent run, a resumed one, a user's viewer) never see half a file, and a crash
leaves either the old file or the new one. Standard library only, so every layer can use it.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp)`` on a temporary path in ``path``'s folder, then rename it to ``path``.

    ``suffix`` keeps writers that look at the extension (``.nii.gz``) working.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        write(Path(tmp_name))
        # mkstemp makes 0600 files; outputs get the permissions any new file would (umask),
        # so that collaborators on a cluster can read them.
        os.chmod(tmp_name, 0o666 & ~_UMASK)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (reports, sidecars, logs, copied files)."""
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(payload))


def _umask() -> int:
    """The process umask (reading it means setting it; restored at once, at import time so
    that no thread sees the temporary value)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.[^/]+$")
"""The names :func:`atomic_write` gives its temporary files (mkstemp: 8 random characters)."""


def leftover_temporaries(folder: Path) -> list[Path]:
    """Temporary files of writes that never finished under ``folder`` (a killed process's)."""
    if not Path(folder).is_dir():
        return []
    return [path for path in Path(folder).rglob(".*")
            if path.is_file() and _TEMPORARY.match(path.name)]

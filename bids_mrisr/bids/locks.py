"""One participant run per subject and output folder at a time.

Job arrays get resubmitted while old tasks still run; two processes writing the same subject
would interleave its outputs and reports. An exclusive ``flock`` on a per-subject file under
``OUT/.bids_mrisr/locks`` prevents that. The kernel drops the lock when its process exits (a
SIGKILL or a node crash leaves no stale lock); Linux NFS maps ``flock`` onto NFS locks.
Different subjects never wait for each other.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_DIR = Path(".bids_mrisr") / "locks"


class SubjectLockedError(RuntimeError):
    pass


class SubjectLock:
    def __init__(self, output_dir: Path, subject: str) -> None:
        self.path = Path(output_dir) / LOCK_DIR / f"sub-{subject}.lock"
        self.subject = subject
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock now or raise :class:`SubjectLockedError` (never waits)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SubjectLockedError(
                f"another bids_mrisr run is processing sub-{self.subject} into this output "
                f"folder ({holder}); wait for it or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

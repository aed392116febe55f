"""What every layer needs from the running process, standard library only: atomic file writes
(``atomic``), Ctrl-C and SIGTERM handling (``interrupts``) and progress display (``progress``).
Nothing here imports another part of the package, so ``sr/`` may use it as a plain library."""

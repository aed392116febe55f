"""What every layer needs from the running process, standard library only: atomic file writes
(``atomic``) and Ctrl-C and SIGTERM handling (``interrupts``).
Nothing here imports another part of the package, so ``sr/`` may use it as a plain library."""

"""Pure image operations used by the preprocessing workflow (no nipype here)."""

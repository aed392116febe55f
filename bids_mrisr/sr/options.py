"""What the SR engine takes and gives: options, result, the user-facing error, the methods.

Kept apart from the engine so that the checkpoint loader, the device helpers and the inference
code can share them without importing each other (no import cycles inside ``sr/``).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np

METHODS = ("student", "teacher", "interp")
"""The super-resolution methods (``--model``), defined once for the whole package."""
PLANES = ("axial", "coronal", "sagittal")
"""The slicing planes (``--planes``) of an RAS+ volume, defined once for the whole package."""
PROFILES = ("gaussian", "box")
"""Slice profiles: ``gaussian`` (FWHM = thickness), ``box`` (soft-edged rectangle of width
thickness, as a sinc-shaped RF pulse gives); ``--slice-profile`` picks one for adaptation."""
UNKNOWN = "unknown"
"""What is not known of an acquisition (a slice-profile shape, a factor, a width) is this value,
never None: a conditioned network is then told the family's average."""

NOTHING_RESTORED = "nothing: the input is already sampled at the target resolution"
"""``Restored`` in the provenance of a run with no axis to restore (``RestoredAxes: []``)."""

VIEW_COUNTS = (1, 2, 4, 8)
"""Sizes of the flip self-ensemble (``--flip-views``): the mean over this many flipped views."""


class SRError(RuntimeError):
    """A super-resolution failure with a message meant for the user (no traceback)."""


@dataclass
class SRResult:
    """What one super-resolution call produces, all on the target grid."""

    image: np.ndarray
    """Super-resolved volume, float32, same shape as the input."""
    gates: np.ndarray | None = None
    """Per-expert gating maps, float32, shape (K, *image.shape), summing to 1 over K (teacher)."""
    expert_names: list[str] = field(default_factory=list)
    uncertainty: np.ndarray | None = None
    """Voxel-wise standard deviation over stochastic draws (only when num_samples > 1)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Provenance for the sidecar: model name, weights sha256, steps, seed, device, ..."""


@dataclass(frozen=True)
class SROptions:
    """Run-time knobs of the inference engine, passed down from the command line."""

    method: str = "student"
    weights: Path | None = None
    weights_sha256: tuple[tuple[str, str], ...] = ()
    """Digests of ``weights`` (name ``""``) and its variants as the run verified them when it
    started (``sr.variants.VerifiedWeights.digests``): the engine checks each manifest against
    them and hashes no weights again; being hashed with the options, they also key the
    workflow's cache. Empty: the engine verifies the weights it loads itself."""
    device: str = "auto"
    seed: int = 0
    steps: int | None = None
    num_samples: int = 1
    eta: float = 0.0
    planes: tuple[str, ...] = PLANES
    batch_size: int | None = None
    max_memory_gb: float | None = None
    threads: int | None = None
    gate_skip_threshold: float = 1e-3
    blurred_axes: tuple[int, ...] | None = None
    """Target-grid axes the input sampled more coarsely than the grid, coarsest first (from the
    header, see :func:`bids_mrisr.sr.geometry.blurred_axes`). The engine restores them one pass
    each, in the planes that contain the axis with it along the slice rows, as the networks are
    trained. ``()``: the input is already at the target resolution (returned unchanged).
    ``None``: unknown; one pass over ``planes`` as given."""
    axis_factors: tuple[float, float, float] | None = None
    """Input spacing over target spacing per axis (from the header): the thick-slice factor."""
    adapt_steps: int = 0
    """Per-scan self-supervised adaptation steps before SR (0: off; see sr/adapt.py)."""
    slice_thickness_ratio: float | None = None
    """Slice thickness over slice spacing along the thick axis (from the sidecar's
    ``SliceThickness``); adaptation then simulates that profile (default: 1, contiguous)."""
    slice_profile: str = UNKNOWN
    """Slice-profile shape the caller tells (one of ``PROFILES``, from ``--slice-profile`` or
    the sidecar); ``UNKNOWN``: the engine reads the scan (``sr/acquisition_input.py``)."""
    slice_profile_source: str = "given"
    """Where ``slice_profile`` came from, for the sidecar: ``given`` (``--slice-profile``) or
    the BIDS metadata it was read from."""
    input_consistency: bool = True
    """After the network, one shrunk back-projection step toward the scan's own slices
    (``sr/consistency.py``), for an input with a single thick axis."""
    flip_views: int | None = None
    """Self-ensemble size: the mean over this many flipped views of the volume (1, 2, 4 or 8;
    see ``sr.inference.FLIP_VIEWS``). None: 2 for an input with a single thick axis
    and a one-call mean estimate, else 1."""

    RUNTIME_FIELDS = frozenset({"device", "batch_size", "max_memory_gb", "threads"})
    """Fields that decide where and how fast the engine runs, not what it writes: a cache of
    finished results (the nipype node's hash) may ignore them."""

    def to_json(self, only: Collection[str] | None = None) -> str:
        """The options as one JSON object (``only``: just these fields), so that they cross
        process and workflow boundaries as one value; :meth:`from_json` gives them back
        equal, with their types (Paths, tuples, None)."""
        values = {item.name: _to_plain(getattr(self, item.name)) for item in fields(self)
                  if only is None or item.name in only}
        return json.dumps(values, sort_keys=True)

    @classmethod
    def from_json(cls, *texts: str) -> SROptions:
        """The options that :meth:`to_json` wrote, the objects of ``texts`` merged (fields in
        none of them take their defaults)."""
        values: dict[str, Any] = {}
        for text in texts:
            values.update(json.loads(text))
        return cls(**{name: _from_plain(value, name in _path_fields())
                      for name, value in values.items()})


def _to_plain(value: Any) -> Any:
    """A field's value as JSON has it: Paths as text, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_to_plain(item) for item in value]
    return value


def _from_plain(value: Any, is_path: bool) -> Any:
    """The inverse of :func:`_to_plain` for a field (``is_path``: typed ``Path``)."""
    if isinstance(value, list):
        return tuple(_from_plain(item, False) for item in value)
    if is_path and value is not None:
        return Path(value)
    return value


def _path_fields() -> frozenset[str]:
    """The fields of :class:`SROptions` typed ``Path`` (or ``Path | None``)."""
    hints = get_type_hints(SROptions)
    return frozenset(name for name, hint in hints.items()
                     if hint is Path or Path in getattr(hint, "__args__", ()))

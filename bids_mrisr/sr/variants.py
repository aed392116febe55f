"""Weight variants: the sub-folders of a checkpoint trained for particular inputs, and loading.

A checkpoint directory may hold variants of itself (each with its own ``model.json``); the
engine picks one from the input's geometry and told slice profile (:mod:`bids_mrisr.sr.inference`);
:func:`verify_with_variants` checks them all up front; their digests key the SR node's cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bids_mrisr.sr.networks.config import ModelConfig
from bids_mrisr.sr.options import SRError

if TYPE_CHECKING:
    import torch

    from bids_mrisr.sr.checkpoint import LoadedCheckpoint

MULTI_AXIS_WEIGHTS = "multi-axis"
"""Sub-folder of a checkpoint with its variant for inputs coarse along several axes (e.g. 2 mm
isotropic). The app restores those one axis at a time, so each pass meets axes that are still
coarse and noise that interpolation smoothed in every coarse direction; the variant was trained
on such passes (``multi_axis_rate`` in a recipe file) and is told each pass's input noise and
the axes still coarse (``bids_mrisr train --scan-input``). The single-axis weights stay better
on single-axis inputs (docs/model-card.md)."""
BOX_WEIGHTS = "box"
"""Sub-folder of a checkpoint with its variant for inputs with one thick axis whose slice
profile is told ``box`` (``--slice-profile box``, a ``2D`` sidecar, or a clear reading of the
scan's spectrum). Box slices alias more and gain least; the variant is the checkpoint fine-tuned
on box profiles only (``bids_mrisr train --profiles box``), so one shape no longer shares the
network's capacity with the other. The shipped one is the width-32 campaign's final snapshot,
better than the main weights on told-box cases and worse on Gaussian ones (docs/model-card.md)."""
VARIANTS = (MULTI_AXIS_WEIGHTS, BOX_WEIGHTS)
VARIANT_USE = {MULTI_AXIS_WEIGHTS: "inputs coarse along several axes",
               BOX_WEIGHTS: "inputs with one thick axis told a box slice profile"}


def weights_variant(weights: Path, name: str) -> Path | None:
    """The checkpoint's variant ``name`` (one of :data:`VARIANTS`), if it has one."""
    variant = Path(weights) / name
    return variant if (variant / "model.json").is_file() else None


def weights_for_geometry(weights: Path, blurred_axes: tuple[int, ...] | None) -> Path:
    """``weights``, or its multi-axis variant where the input is coarse along several axes and
    the checkpoint has one."""
    if blurred_axes is not None and len(blurred_axes) > 1:
        variant = weights_variant(weights, MULTI_AXIS_WEIGHTS)
        if variant is not None:
            return variant
    return Path(weights)


def weights_for_profile(root: Path, weights: Path, told_box: bool) -> Path:
    """``weights``, or the checkpoint's box variant for an input with one thick axis told a box
    slice profile, where the geometry chose the checkpoint itself and it has one."""
    box = weights_variant(root, BOX_WEIGHTS)
    return box if told_box and box is not None and weights == Path(root) else weights


def variant_name(root: Path, weights: Path) -> str | None:
    """The name of the variant ``weights`` is, or None for the checkpoint ``root`` itself."""
    return None if Path(weights) == Path(root) else Path(weights).name


def load(weights: Path, device: torch.device, method: str,
         verified_sha256: str | None = None) -> LoadedCheckpoint:
    """A verified checkpoint of the requested kind, its problems as :class:`SRError`
    (``verified_sha256``: its digest as the run checked it up front, so it is not hashed
    again)."""
    from bids_mrisr.sr.checkpoint import load_checkpoint  # its errors are SRErrors already

    try:
        ckpt = load_checkpoint(weights, device, verified_sha256)
    except OSError as exc:
        raise SRError(f"cannot read weights from {weights}: {exc}") from exc
    if ckpt.config.kind != method:
        raise SRError(
            f"the checkpoint in {weights} holds a {ckpt.config.kind} model but "
            f"--method {method} was requested"
        )
    return ckpt


@dataclass(frozen=True)
class VerifiedWeights:
    """A checkpoint and its variants, each checked against its recorded sha256 once."""

    path: Path
    config: ModelConfig
    sha256: str
    variants: dict[str, str]  # variant name -> its sha256, for the variants the checkpoint has

    @property
    def digests(self) -> tuple[tuple[str, str], ...]:
        """(variant name, sha256) of the checkpoint (name ``""``) and each of its variants:
        what ``SROptions.weights_sha256`` carries to the engine, which then hashes nothing."""
        return (("", self.sha256), *((name, self.variants[name]) for name in VARIANTS
                                     if name in self.variants))


def verify_with_variants(weights: Path) -> VerifiedWeights:
    """Verify ``weights`` and every variant it holds (no network is built): a missing, corrupt
    or mismatched one is an :class:`SRError` before any work starts."""
    from bids_mrisr.sr.checkpoint import verify_checkpoint  # its errors are SRErrors already

    weights = Path(weights)
    _, config, sha256 = verify_checkpoint(weights)
    variants = {}
    for name in VARIANTS:
        variant = weights_variant(weights, name)
        if variant is None:
            continue
        _, variant_config, variants[name] = verify_checkpoint(variant)
        if variant_config.kind != config.kind:
            raise SRError(f"{variant}: a {variant_config.kind} checkpoint inside a "
                          f"{config.kind} one")
    return VerifiedWeights(weights, config, sha256, variants)

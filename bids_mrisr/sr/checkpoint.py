"""Model checkpoints: a directory with ``model.json`` (architecture + provenance + sha256) and
``model.safetensors`` (the weights).

safetensors rather than pickle: loading a checkpoint must never execute code, since users may be
handed weights by third parties. The sha256 of the weights file is verified before anything is
parsed, and it goes into every output sidecar so results can be traced to exact weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bids_mrisr.runtime.atomic import atomic_write
from bids_mrisr.sr.networks.config import ModelConfig
from bids_mrisr.sr.networks.factory import build_model
from bids_mrisr.sr.options import SRError

FORMAT = "bids_mrisr-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "model.json"
WEIGHTS = "model.safetensors"


class CheckpointError(SRError):
    """A checkpoint that cannot be used; the message names the path and the problem."""


@dataclass
class LoadedCheckpoint:
    model: nn.Module
    """Ready for inference: eval mode, on the requested device."""
    config: ModelConfig
    sha256: str
    provenance: dict[str, Any] = field(default_factory=dict)
    path: Path = Path()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(model: nn.Module, directory: Path, provenance: dict | None = None) -> str:
    """Write ``model`` (which must carry ``.config``) to ``directory``; return the weights sha256.

    The weights are written first and the manifest last, so a directory with a manifest always
    has the weights it describes.
    """
    from safetensors.torch import save_file

    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise CheckpointError(f"cannot save {type(model).__name__} to {directory}: no ModelConfig")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS, lambda p: save_file(state, str(p)))
    digest = sha256_file(directory / WEIGHTS)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "provenance": dict(provenance or {}),
        "weights_file": WEIGHTS,
        "sha256": digest,
    }
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    atomic_write(directory / MANIFEST, lambda p: p.write_text(text, encoding="utf-8"))
    return digest


def read_manifest(directory: Path) -> dict[str, Any]:
    """Parse and check ``model.json`` (no weights are read)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: invalid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path}: unsupported format_version {manifest.get('format_version')!r} "
            f"(this version reads {FORMAT_VERSION})"
        )
    for key, kind in (("config", dict), ("sha256", str), ("weights_file", str)):
        if not isinstance(manifest.get(key), kind):
            raise CheckpointError(f"checkpoint {path}: missing or invalid {key!r}")
    wf = manifest["weights_file"]
    if Path(wf).name != wf:
        raise CheckpointError(f"checkpoint {path}: weights_file must be a plain file name")
    return manifest


def verify_checkpoint(directory: Path) -> tuple[dict[str, Any], ModelConfig, str]:
    """Manifest, config and sha256 of a checkpoint whose weights match their recorded hash.

    Cheap (no network is built): the app calls it up front so that bad ``--weights`` fail
    before any preprocessing.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    weights = directory / manifest["weights_file"]
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {directory}: weights file {weights.name} is missing")
    digest = sha256_file(weights)
    if digest != manifest["sha256"].lower():
        raise CheckpointError(
            f"checkpoint {weights}: sha256 mismatch, weights are corrupt or modified "
            f"(expected {manifest['sha256']}, got {digest})"
        )
    return manifest, _config(manifest, directory), digest


def load_checkpoint(directory: Path, device: str | torch.device = "cpu",
                    verified_sha256: str | None = None) -> LoadedCheckpoint:
    """Verify and load a checkpoint; the model comes back in eval mode on ``device``.

    ``verified_sha256``: the digest this run already checked the weights against (the app
    verifies every checkpoint and variant once, up front); the manifest must still name it, but
    the weights are not hashed again."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if verified_sha256 is None:
        manifest, config, digest = verify_checkpoint(directory)
    else:
        manifest, config, digest = _verified_before(directory, verified_sha256)
    weights = directory / manifest["weights_file"]
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {weights}: unreadable weights ({exc})") from None
    model = build_model(config)
    _check_state(model, state, directory)
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    provenance = manifest.get("provenance") or {}
    return LoadedCheckpoint(model=model, config=config, sha256=digest,
                            provenance=dict(provenance), path=directory)


def read_config(directory: Path) -> ModelConfig:
    """The architecture a checkpoint holds, from its manifest alone (no weights are read)."""
    return _config(read_manifest(directory), Path(directory))


def _config(manifest: dict[str, Any], directory: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(manifest["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {directory}: invalid config ({exc})") from None


def _verified_before(directory: Path, sha256: str) -> tuple[dict[str, Any], ModelConfig, str]:
    """Manifest and config of a checkpoint whose weights were hashed earlier in the run."""
    manifest = read_manifest(directory)
    if manifest["sha256"].lower() != sha256.lower():
        raise CheckpointError(
            f"checkpoint {directory}: {MANIFEST} changed since the run verified it (it now "
            f"records {manifest['sha256']}, the run checked {sha256})")
    return manifest, _config(manifest, directory), sha256.lower()


def _check_state(model: nn.Module, state: dict[str, torch.Tensor], directory: Path) -> None:
    """Compare keys and shapes up front to give one readable line instead of a torch traceback."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    shapes = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if not (missing or extra or shapes):
        return
    details = []
    if missing:
        details.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if extra:
        details.append(f"{len(extra)} unexpected keys (e.g. {extra[0]})")
    if shapes:
        k = shapes[0]
        details.append(f"{len(shapes)} shape mismatches (e.g. {k}: {got[k]} vs {expected[k]})")
    raise CheckpointError(
        f"mismatched checkpoint: weights in {directory} do not fit its config: "
        + "; ".join(details)
    )


def random_checkpoint(directory: Path, config: ModelConfig, seed: int = 0) -> str:
    """Write a randomly initialised checkpoint (tests, benchmarks); return its sha256."""
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = build_model(config)
    finally:
        torch.random.set_rng_state(gen_state)
    return save_checkpoint(model, directory, provenance={"trained": False, "seed": seed})

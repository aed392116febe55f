"""The nipype node that calls the SR engine, and the file-level function it wraps."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_mrisr.image.air import zero_input_air
from bids_mrisr.image.io import float_image, save_nifti
from bids_mrisr.image.normalize import Normalisation
from bids_mrisr.image.resample import resample_to_resolution
from bids_mrisr.progress import progress_callback
from bids_mrisr.runtime.interrupts import install_in_worker, raise_if_interrupted
from bids_mrisr.sr.engine import super_resolve
from bids_mrisr.sr.options import SROptions

PARTIAL_DIRNAME = "partial"
"""The SR node's folder of finished batches (sr/resume.py), removed once its outputs exist."""


def bias_on_grid(bias_file: Path, image: nib.Nifti1Image) -> np.ndarray:
    """The N4 field (on the reoriented input grid) resampled onto ``image``'s target grid."""
    bias = nib.load(str(bias_file))
    resolution = float(image.header.get_zooms()[0])
    data, _ = resample_to_resolution(np.asanyarray(bias.dataobj), bias.affine, resolution)
    if data.shape != image.shape[:3]:
        raise ValueError(f"{bias_file}: bias field grid {data.shape} does not match the target "
                         f"grid {image.shape[:3]}")
    return np.maximum(data, np.float32(1e-3))


def restore_input_intensities(estimate: np.ndarray, params: Normalisation,
                              bias_file: Path | None = None,
                              grid: nib.Nifti1Image | None = None) -> np.ndarray:
    """Map a normalised target-grid estimate back to the input's intensities, in place (the
    estimate's buffer becomes the output, so --mem pays for one volume): undo the
    normalisation, multiply the N4 bias field (on ``grid``) back in, and never go below the
    input's range. Cubic and SR overshoot at edges; the normalisation's offset is the input's
    0.5th percentile, so magnitude images (>= 0) are clipped at 0."""
    restored = params.invert(estimate, in_place=True)
    if bias_file is not None:
        if grid is None:
            raise ValueError("the bias field needs the target grid it is resampled onto")
        restored *= bias_on_grid(bias_file, grid)
    np.maximum(restored, np.float32(min(params.offset, 0.0)), out=restored)
    return restored


def super_resolve_file(
    in_file: Path,
    params_file: Path,
    options: SROptions,
    out_dir: Path,
    description: str = "super-resolution",
    bias_file: Path | None = None,
    source_file: Path | None = None,
) -> dict[str, Path | None]:
    """Super-resolve a normalised target-grid volume and map it back to the input's
    intensities: undo the normalisation, then multiply the N4 bias field back in (downstream
    tools run their own bias correction and expect the scan as acquired). The engine keeps its
    finished batches in ``out_dir/partial`` until the outputs are written, so that a call
    interrupted there resumes. Where ``source_file`` (the reoriented input) is zero all around,
    the output is zero too (image/air.py)."""
    image = nib.load(str(in_file))
    volume = np.asanyarray(image.dataobj).astype(np.float32)
    params = Normalisation.from_json(params_file)
    partial = out_dir / PARTIAL_DIRNAME
    result = super_resolve(volume, options, progress=progress_callback(description),
                           resume_dir=partial)
    del volume  # each full-size array is released as soon as it is written (--mem)
    restored = restore_input_intensities(result.image, params, bias_file, image)
    result.image = None  # type: ignore[assignment]  # now the restored volume's buffer
    if bias_file is not None:
        result.info["BiasFieldRestored"] = True
    if source_file is not None:
        air = zero_input_air(source_file, image)
        restored[air] = 0
        result.info["ZeroWhereInputIsZero"] = (
            f"{int(air.sum())} voxels whose input neighbours are all 0 are 0")
        del air
    # Work-directory files stay uncompressed: gzip of float32 costs more than a second per
    # whole head and buys little; the derivatives node writes the compressed output.
    outputs: dict[str, Path | None] = {
        "out_file": save_nifti(float_image(restored, image), out_dir / "sr.nii"),
        "gates_file": None,
        "std_file": None,
    }
    del restored
    if result.gates is not None:
        gates = np.moveaxis(result.gates, 0, -1)  # (K, X, Y, Z) -> (X, Y, Z, K)
        outputs["gates_file"] = save_nifti(float_image(gates, image), out_dir / "gates.nii")
    if result.uncertainty is not None:
        std = result.uncertainty * np.float32(params.scale)
        outputs["std_file"] = save_nifti(float_image(std, image), out_dir / "std.nii")
    info = dict(result.info)
    if result.expert_names:
        info["ExpertNames"] = list(result.expert_names)
    info_file = out_dir / "sr_info.json"
    info_file.write_text(json.dumps(info, indent=2, default=str))
    outputs["info_file"] = info_file
    shutil.rmtree(partial, ignore_errors=True)
    return outputs


class _SuperResolveInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="normalised volume on the target grid")
    params_file = File(exists=True, mandatory=True, desc="normalisation parameters (JSON)")
    bias_file = File(exists=True, desc="N4 bias field on the reoriented input grid")
    source_file = File(exists=True, desc="the reoriented input: where it is 0 all around, the "
                       "output is 0")
    # The engine's options as one value (SROptions.to_json): the fields that decide the result
    # are hashed, so a change to any of them reruns the node; those that only decide where and
    # how fast it runs (SROptions.RUNTIME_FIELDS) are not.
    options = traits.Str(mandatory=True, desc="SROptions.to_json() without its runtime fields")
    runtime_options = traits.Str("{}", usedefault=True, nohash=True,
                                 desc="SROptions.to_json() of its runtime fields")
    description = traits.Str("super-resolution", usedefault=True, nohash=True)


def set_node_options(inputs: _SuperResolveInputSpec, options: SROptions) -> None:
    """Give the node ``options``: the result-deciding fields hashed, the runtime ones not."""
    runtime = SROptions.RUNTIME_FIELDS
    inputs.options = options.to_json(only=[f.name for f in dataclasses.fields(SROptions)
                                           if f.name not in runtime])
    inputs.runtime_options = options.to_json(only=runtime)


def node_options(inputs: _SuperResolveInputSpec) -> SROptions:
    """The engine options that :func:`set_node_options` gave the node."""
    return SROptions.from_json(inputs.options, inputs.runtime_options)


class _SuperResolveOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    gates_file = File(desc="4D per-expert gating maps (teacher only)")
    std_file = File(desc="voxel-wise SD over stochastic draws (num_samples > 1)")
    info_file = File(exists=True, desc="provenance of the SR call (JSON)")


class SuperResolve(SimpleInterface):
    """Resumable: nipype keeps the node's folder (and the engine's finished batches in it) when
    a run with the same inputs was interrupted there."""

    input_spec = _SuperResolveInputSpec
    output_spec = _SuperResolveOutputSpec
    _can_resume = True

    def run(self, cwd=None, ignore_exception=None, **inputs):
        """nipype turns an interruption inside the interface into a node failure (and then
        empties the node's folder on the rerun): raise it again, past the node."""
        result = super().run(cwd=cwd, ignore_exception=ignore_exception, **inputs)
        raise_if_interrupted()
        return result

    def _run_interface(self, runtime):
        install_in_worker()
        inputs = self.inputs
        options = node_options(inputs)
        bias = Path(inputs.bias_file) if isdefined(inputs.bias_file) else None
        source = Path(inputs.source_file) if isdefined(inputs.source_file) else None
        outputs = super_resolve_file(Path(inputs.in_file), Path(inputs.params_file), options,
                                     Path(os.getcwd()), inputs.description, bias_file=bias,
                                     source_file=source)
        self._results.update({key: str(path) for key, path in outputs.items() if path})
        return runtime

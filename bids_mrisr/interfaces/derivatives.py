"""The nipype node that writes one run's BIDS-Derivatives (always re-run, never cached)."""

from __future__ import annotations

import json
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_mrisr.bids.derivatives import write_run_outputs


class _WriteDerivativesInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Str(mandatory=True)
    relpath = traits.Str(mandatory=True, desc="input path relative to bids_dir")
    stem = traits.Str(mandatory=True)
    suffix = traits.Str(mandatory=True)
    entities = traits.Dict(mandatory=True)
    resolution = traits.Float(mandatory=True)
    skull_stripped = traits.Bool(mandatory=True)
    input_voxel_size = traits.List(traits.Float, mandatory=True)
    sr_file = File(exists=True, mandatory=True)
    info_file = File(exists=True, mandatory=True)
    gates_file = File()
    std_file = File()
    input_dtype = traits.Str("float32", usedefault=True,
                             desc="the input's stored data type (integer -> scaled int16)")


class _WriteDerivativesOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True))


class WriteDerivatives(SimpleInterface):
    input_spec = _WriteDerivativesInputSpec
    output_spec = _WriteDerivativesOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs

        def optional(value: str) -> Path | None:
            return Path(value) if isdefined(value) and value else None

        written = write_run_outputs(
            output_dir=Path(inputs.output_dir),
            relpath=inputs.relpath,
            stem=inputs.stem,
            suffix=inputs.suffix,
            entities=dict(inputs.entities),
            resolution=inputs.resolution,
            sr_file=Path(inputs.sr_file),
            info=json.loads(Path(inputs.info_file).read_text()),
            skull_stripped=inputs.skull_stripped,
            input_voxel_size=list(inputs.input_voxel_size),
            gates_file=optional(inputs.gates_file),
            std_file=optional(inputs.std_file),
            input_dtype=inputs.input_dtype,
        )
        self._results["out_files"] = [str(p) for p in written]
        return runtime

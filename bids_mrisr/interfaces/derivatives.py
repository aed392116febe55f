"""The nipype nodes that write one run's BIDS-Derivatives, one node per product (always
re-run, never cached), as NiPreps' DerivativesDataSink does."""

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

from bids_mrisr.bids.derivatives import (
    RunOutputs,
    nothing_restored,
    write_gating_maps,
    write_sr_image,
    write_uncertainty,
)

PRODUCTS = ("sr", "uncertainty", "gates")


class _WriteDerivativeInputSpec(BaseInterfaceInputSpec):
    product = traits.Enum(*PRODUCTS, mandatory=True, desc="which product this node writes")
    in_file = File(desc="the product's volume in the work dir (absent: nothing to write)")
    output_dir = traits.Str(mandatory=True)
    relpath = traits.Str(mandatory=True, desc="input path relative to bids_dir")
    stem = traits.Str(mandatory=True)
    suffix = traits.Str(mandatory=True)
    entities = traits.Dict(mandatory=True)
    resolution = traits.Float(mandatory=True)
    skull_stripped = traits.Bool(mandatory=True)
    input_voxel_size = traits.List(traits.Float, mandatory=True)
    info_file = File(exists=True, mandatory=True)
    input_dtype = traits.Str("float32", usedefault=True,
                             desc="the input's stored data type (integer -> scaled int16)")
    restored = traits.Bool(True, usedefault=True,
                           desc="False: the input is already at the target resolution, so "
                           "the run is resampled only and named without desc-sr")


class _WriteDerivativeOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True))


class WriteDerivative(SimpleInterface):
    input_spec = _WriteDerivativeInputSpec
    output_spec = _WriteDerivativeOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        written: list[Path] = []
        if isdefined(inputs.in_file) and inputs.in_file:
            info = json.loads(Path(inputs.info_file).read_text())
            run = RunOutputs(
                output_dir=Path(inputs.output_dir), relpath=inputs.relpath, stem=inputs.stem,
                suffix=inputs.suffix, entities=dict(inputs.entities),
                resolution=inputs.resolution,
                info=info,
                skull_stripped=inputs.skull_stripped,
                input_voxel_size=list(inputs.input_voxel_size),
                restored=inputs.restored and not nothing_restored(info))
            volume = Path(inputs.in_file)
            if inputs.product == "sr":
                written = write_sr_image(run, volume, inputs.input_dtype)
            elif inputs.product == "uncertainty":
                written = write_uncertainty(run, volume)
            else:
                written = write_gating_maps(run, volume)
        self._results["out_files"] = [str(p) for p in written]
        return runtime

"""Thin nipype adapters around the pure preprocessing functions in :mod:`bids_mrisr.image`."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_mrisr.image.n4 import n4_correct
from bids_mrisr.image.normalize import normalise_file
from bids_mrisr.image.preprocess import N4_SHRINK_FACTOR
from bids_mrisr.image.reorient import reorient_to_ras
from bids_mrisr.image.resample import resample_file

LOGGER = logging.getLogger("bids_mrisr")


def _out_path(name: str) -> Path:
    return Path(os.getcwd()) / name


@contextmanager
def _logged_step(label: str, what: str) -> Iterator[None]:
    """A start and an end line for the slow steps, so preprocessing is never silent."""
    if label:
        LOGGER.info("%s: %s ...", label, what)
    started = time.monotonic()
    yield
    if label:
        LOGGER.info("%s: %s done (%.1f s)", label, what, time.monotonic() - started)


class _InFileSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="input volume")
    run_label = traits.Str("", usedefault=True, nohash=True,
                           desc="the run's input path, for progress lines")


class _OutFileSpec(TraitedSpec):
    out_file = File(exists=True, desc="output volume")


class Reorient(SimpleInterface):
    """Reorient to RAS+ (closest canonical)."""

    input_spec = _InFileSpec
    output_spec = _OutFileSpec

    def _run_interface(self, runtime):
        self._results["out_file"] = str(
            reorient_to_ras(Path(self.inputs.in_file), _out_path("reoriented.nii")))
        return runtime


class _N4InputSpec(_InFileSpec):
    shrink_factor = traits.Int(N4_SHRINK_FACTOR, usedefault=True,
                               desc="fit on a copy shrunk by this factor")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="ITK threads")


class _N4OutputSpec(_OutFileSpec):
    bias_field = File(exists=True, desc="estimated multiplicative bias field")


class N4BiasCorrection(SimpleInterface):
    """N4 through SimpleITK (there is no ANTs on Debian)."""

    input_spec = _N4InputSpec
    output_spec = _N4OutputSpec

    def _run_interface(self, runtime):
        with _logged_step(self.inputs.run_label, "N4 bias-field correction"):
            out_file, bias = n4_correct(
                Path(self.inputs.in_file),
                _out_path("n4.nii"),
                bias_file=_out_path("bias_field.nii"),
                shrink_factor=self.inputs.shrink_factor,
                threads=self.inputs.num_threads,
            )
        self._results["out_file"] = str(out_file)
        self._results["bias_field"] = str(bias)
        return runtime


class _NormaliseOutputSpec(_OutFileSpec):
    params_file = File(exists=True, desc="JSON with offset/scale to invert the normalisation")


class Normalise(SimpleInterface):
    """Robust percentile normalisation; the parameters are kept to invert it later."""

    input_spec = _InFileSpec
    output_spec = _NormaliseOutputSpec

    def _run_interface(self, runtime):
        out_file, params = normalise_file(
            Path(self.inputs.in_file), _out_path("normalised.nii"),
            _out_path("normalisation.json"))
        self._results["out_file"] = str(out_file)
        self._results["params_file"] = str(params)
        return runtime


class _ResampleInputSpec(_InFileSpec):
    resolution = traits.Float(desc="isotropic voxel size in mm (default: finest, <= 1 mm)")


class _ResampleOutputSpec(_OutFileSpec):
    resolution = traits.Float(desc="the voxel size actually used")


class ResampleToGrid(SimpleInterface):
    """Cubic B-spline onto the isotropic target grid."""

    input_spec = _ResampleInputSpec
    output_spec = _ResampleOutputSpec

    def _run_interface(self, runtime):
        resolution = self.inputs.resolution if isdefined(self.inputs.resolution) else None
        with _logged_step(self.inputs.run_label, "cubic resampling onto the target grid"):
            out_file, used = resample_file(
                Path(self.inputs.in_file), _out_path("target_grid.nii"), resolution)
        self._results["out_file"] = str(out_file)
        self._results["resolution"] = used
        return runtime

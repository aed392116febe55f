"""One typed settings object, built once from the command line and an optional TOML file.

The CLI builds :class:`Settings` at the top and passes its fields down as plain arguments;
nothing below ``cli/`` and ``workflows/base.py`` reads configuration on its own.
Precedence: command-line flag > TOML file (``--config-file``) > the defaults below.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_mrisr.errors import ExitCode, UserError
from bids_mrisr.sr.options import METHODS, PLANES, PROFILES, VIEW_COUNTS

MODELS = METHODS  # the CLI's --model names are the engine's methods
ADAPT_MODES = ("off", "auto")
CONSISTENCY_MODES = ("auto", "off")
SLICE_PROFILE_CHOICES = ("auto", *PROFILES)
FLIP_VIEW_CHOICES = ("auto", *map(str, VIEW_COUNTS))


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know, resolved and validated."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_labels: tuple[str, ...] = ()
    session_labels: tuple[str, ...] = ()
    bids_filters: dict[str, dict[str, Any]] = field(default_factory=dict)
    nprocs: int = 0
    omp_nthreads: int = 0
    mem_gb: float | None = None
    device: str = "auto"
    skip_bids_validation: bool = False
    reports_only: bool = False
    model: str = "student"
    weights: Path | None = None
    steps: int | None = None
    num_samples: int = 1
    output_resolution: float | None = None
    seed: int = 0
    planes: tuple[str, ...] = PLANES
    adapt: str = "off"
    adapt_steps: int = 300
    slice_profile: str = "auto"
    """Slice-profile shape adaptation simulates; auto: read from each scan's spectrum."""
    flip_views: str = "auto"
    """Flip self-ensemble size; auto: 2 for thick-slice inputs restored by a mean estimate (the
    student), 1 otherwise."""
    input_consistency: str = "auto"
    """auto: after the network, one shrunk step toward the scan's own slices for an input with
    one thick axis (sr/consistency.py); off: the network's output as it is."""
    verbose: int = 0
    clean_workdir: bool = False
    nipype_plugin: str | None = None
    """From ``--use-plugin``: a nipype execution plugin (e.g. SLURMGraph) instead of the
    default (Linear for one run, MultiProc for several)."""
    nipype_plugin_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Settings built without the parser (tests, other callers) get the same checks here."""
        problems = []
        if self.model not in MODELS:
            problems.append(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if not set(self.planes) <= set(PLANES) or not self.planes:
            problems.append(f"planes must be among {', '.join(PLANES)}, got {self.planes!r}")
        if self.input_consistency not in CONSISTENCY_MODES:
            problems.append(f"input_consistency must be one of {', '.join(CONSISTENCY_MODES)}, "
                            f"got {self.input_consistency!r}")
        if self.adapt not in ADAPT_MODES:
            problems.append(f"adapt must be one of {', '.join(ADAPT_MODES)}, got {self.adapt!r}")
        if self.slice_profile not in SLICE_PROFILE_CHOICES:
            problems.append(f"slice_profile must be one of {', '.join(SLICE_PROFILE_CHOICES)}, "
                            f"got {self.slice_profile!r}")
        if self.flip_views not in FLIP_VIEW_CHOICES:
            problems.append(f"flip_views must be one of {', '.join(FLIP_VIEW_CHOICES)}, "
                            f"got {self.flip_views!r}")
        if self.adapt_steps < 1:
            problems.append(f"adapt_steps must be >= 1, got {self.adapt_steps}")
        if self.adapt == "auto" and self.model == "interp":
            problems.append("--adapt auto needs a network: --model student (or a teacher "
                            "trained as a posterior-mean regressor)")
        if self.num_samples < 1:
            problems.append(f"num_samples must be >= 1, got {self.num_samples}")
        if self.output_resolution is not None and self.output_resolution <= 0:
            problems.append(f"output_resolution must be > 0, got {self.output_resolution}")
        if problems:
            raise UserError("invalid settings: " + "; ".join(problems), ExitCode.USAGE)

    def resolved_nprocs(self) -> int:
        return self.nprocs if self.nprocs > 0 else (os.cpu_count() or 1)

    def resolved_omp_nthreads(self, parallel_jobs: int = 1) -> int:
        """Threads per N4/SR job: the cores shared among the jobs that run side by side."""
        if self.omp_nthreads > 0:
            return self.omp_nthreads
        return max(1, self.resolved_nprocs() // max(1, parallel_jobs))

    def memory_per_job(self, parallel_jobs: int = 1) -> float | None:
        """The --mem budget shared among the jobs that run side by side, like the cores."""
        if self.mem_gb is None:
            return None
        return self.mem_gb / max(1, parallel_jobs)


NIPYPE_PLUGINS = ("Linear", "MultiProc", "LegacyMultiProc", "SLURM", "SLURMGraph", "SGE",
                  "SGEGraph", "PBS", "PBSGraph", "LSF", "Condor", "CondorDAGMan", "OAR",
                  "IPython")
"""nipype's execution plugins (``nipype.pipeline.plugins``), checked before any work starts."""


def read_plugin_file(path: Path) -> tuple[str, dict[str, Any]]:
    """A ``--use-plugin`` YAML file (fMRIPrep's format): ``plugin:`` and ``plugin_args:``."""
    import yaml

    try:
        content = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"--use-plugin {path}: cannot read it ({exc.strerror})",
                        ExitCode.NO_INPUT) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"--use-plugin {path}: not valid YAML{line}", ExitCode.USAGE) from None
    if not isinstance(content, dict) or not isinstance(content.get("plugin"), str):
        raise UserError(f"--use-plugin {path}: expected a 'plugin:' name and optional "
                        "'plugin_args:' mapping", ExitCode.USAGE)
    unknown = sorted(set(content) - {"plugin", "plugin_args"})
    if unknown:
        raise UserError(f"--use-plugin {path}: unknown key(s) {', '.join(unknown)}",
                        ExitCode.USAGE)
    plugin, args = content["plugin"], content.get("plugin_args") or {}
    if plugin not in NIPYPE_PLUGINS:
        raise UserError(f"--use-plugin {path}: unknown nipype plugin {plugin!r}; one of "
                        f"{', '.join(NIPYPE_PLUGINS)}", ExitCode.USAGE)
    if not isinstance(args, dict):
        raise UserError(f"--use-plugin {path}: plugin_args must be a mapping", ExitCode.USAGE)
    return plugin, args


def read_toml(path: Path) -> dict[str, Any]:
    """Read a ``--config-file`` (an optional ``[bids_mrisr]`` table); the CLI parses the values."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found", ExitCode.USAGE) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid TOML ({err})", ExitCode.USAGE) from None
    return dict(data.get("bids_mrisr", data))


def merge(cli_values: dict[str, Any], toml_values: dict[str, Any]) -> dict[str, Any]:
    """Command-line values that were given (not None) win over TOML values."""
    merged = dict(toml_values)
    merged.update({key: value for key, value in cli_values.items() if value is not None})
    return merged

"""The BIDS-App argument parser: ``bids_mrisr bids_dir output_dir {participant,group}``.

Parsing only turns strings into values; :func:`build_settings` then merges the TOML config file,
resolves paths and checks them, and raises :class:`UserError` with the exit code to use.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from bids_mrisr import __version__
from bids_mrisr.config import (
    ADAPT_MODES,
    CONSISTENCY_MODES,
    FLIP_VIEW_CHOICES,
    MODELS,
    SLICE_PROFILE_CHOICES,
    Settings,
    merge,
    read_plugin_file,
    read_toml,
)
from bids_mrisr.errors import ExitCode, UserError
from bids_mrisr.sr.options import PLANES

ANALYSIS_LEVELS = ("participant", "group")
_LABEL = re.compile(r"^[A-Za-z0-9]+$")


class UsageParser(argparse.ArgumentParser):
    """argparse that exits with 64 (usage) instead of 2, as the BIDS Apps spec expects."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage()
        raise UserError(f"usage error: {message}", ExitCode.USAGE)


def resolved_path(text: str) -> Path:
    """A path argument made absolute and tidy (``~`` expanded, ``..`` and links resolved), so
    that every message and every generated script names the file plainly."""
    return Path(text).expanduser().resolve()


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _device(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


def _mem_gb(text: str) -> float:
    """Accept 8, 8G, 8GB, 8000M, 8000MB (as fMRIPrep does)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([GgMm]?)[Bb]?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a memory size such as 8G or 8000MB: {text!r}")
    value = float(match.group(1))
    return value / 1024 if match.group(2).lower() == "m" else value


EXIT_CODE_HELP = (
    (ExitCode.OK, "success"), (ExitCode.FAILURE, "some runs failed, the others were written"),
    (ExitCode.INVALID_BIDS, "invalid BIDS input"), (ExitCode.UNKNOWN_LEVEL, "unknown level"),
    (ExitCode.NOTHING_SELECTED, "the filters selected nothing"), (ExitCode.USAGE, "usage error"),
    (ExitCode.BAD_DATA, "every selected input is unusable"), (ExitCode.NO_INPUT, "no T1w/T2w"),
    (ExitCode.NOT_ENOUGH_MEMORY, "every run refused, one at least for lack of memory"),
    (ExitCode.CANT_CREATE, "cannot create output"), (ExitCode.IO_ERROR, "input/output error"),
    (ExitCode.INTERRUPTED, "interrupted (Ctrl-C)"),
    (ExitCode.TERMINATED, "stopped by SIGTERM (a rerun with the same -w resumes both)"))


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="bids_mrisr",
        description=(
            "Super-resolve the T1w and T2w runs of a BIDS dataset (MoEDiff-SR teacher or its "
            "distilled student) and write BIDS-Derivatives. Subcommands: 'bids_mrisr train' "
            "(train networks on local data), 'bids_mrisr demo' (the whole product on an "
            "embedded dataset), 'bids_mrisr slurm' (a SLURM job array); each has --help."
        ),
        epilog="exit codes: " + "; ".join(
            f"{int(code)} {text}" for code, text in EXIT_CODE_HELP) + " (docs/usage.md)",
    )
    parser.add_argument("bids_dir", type=resolved_path, help="the root of the input BIDS dataset")
    parser.add_argument("output_dir", type=resolved_path, help="where the derivatives are written")
    parser.add_argument("analysis_level", help="participant or group")
    parser.add_argument("--version", action="version", version=f"bids_mrisr {__version__}")

    filters = parser.add_argument_group("selecting data")
    filters.add_argument(
        "--participant-label",
        "--participant_label",
        dest="participant_labels",
        nargs="+",
        metavar="LABEL",
        help="labels to process, with or without 'sub-', or a text file of labels",
    )
    filters.add_argument(
        "--session-label",
        "--session_label",
        dest="session_labels",
        nargs="+",
        metavar="LABEL",
        help="sessions to process, with or without 'ses-'",
    )
    filters.add_argument(
        "--bids-filter-file",
        "--bids_filter_file",
        dest="bids_filter_file",
        type=resolved_path,
        metavar="FILE",
        help='JSON of pybids queries per suffix, e.g. {"t1w": {"acquisition": "mprage"}}',
    )

    execution = parser.add_argument_group("execution")
    execution.add_argument("-w", "--work-dir", dest="work_dir", type=resolved_path,
                           help="nipype work directory; reuse it to resume (default: ./work)")
    execution.add_argument("--nprocs", "--n-cpus", dest="nprocs", type=_positive_int,
                           help="runs processed in parallel (default: all cores)")
    execution.add_argument("--omp-nthreads", dest="omp_nthreads", type=_positive_int,
                           help="threads per job for N4 and torch")
    execution.add_argument("--mem", "--mem-gb", dest="mem_gb", type=_mem_gb,
                           help="memory budget, e.g. 8G; the SR engine tiles to respect it")
    execution.add_argument("--use-plugin", dest="use_plugin", type=resolved_path, metavar="FILE",
                           help="nipype plugin YAML ('plugin: SLURMGraph' and 'plugin_args:'), "
                                "as fMRIPrep's; default: MultiProc on this machine "
                                "(docs/hpc.md)")
    execution.add_argument("--config-file", dest="config_file", type=resolved_path,
                           help="TOML file with any of the long options (flags win)")
    execution.add_argument("--skip-bids-validation", "--skip_bids_validation",
                           dest="skip_bids_validation", action="store_true", default=None,
                           help="do not run the BIDS validator on the input")
    execution.add_argument("--clean-workdir", dest="clean_workdir", action="store_true",
                           default=None,
                           help="remove each run's intermediate files from the work dir once "
                                "its outputs are written (failed runs keep theirs to resume)")
    execution.add_argument("--reports-only", dest="reports_only", action="store_true",
                           default=None,
                           help="only rebuild the QC reports from existing outputs")
    execution.add_argument("-v", "--verbose", dest="verbose", action="count",
                           help="more log output (repeat for debug)")
    execution.add_argument("--debug", dest="verbose", action="store_const", const=2,
                           help="as -vv: debug logs, and nipype prints each failed node's "
                                "traceback (otherwise in the crash file the error line names)")

    sr = parser.add_argument_group("super-resolution")
    sr.add_argument("--model", choices=MODELS,
                    help="student (fast; the default), teacher (MoEDiff-SR, writes gating "
                         "maps) or interp (cubic B-spline only)")
    sr.add_argument("--weights", type=resolved_path, metavar="DIR",
                    help="checkpoint directory (default: the shipped weights)")
    sr.add_argument("--steps", type=_positive_int,
                    help="diffusion checkpoints only: DDIM sampling steps of one draw "
                         "(default: their mean estimate); the shipped student runs one pass")
    sr.add_argument("--num-samples", dest="num_samples", type=_positive_int,
                    help="stochastic draws; N > 1 also writes a voxel-wise uncertainty map "
                         "(default: 1)")
    sr.add_argument("--output-resolution", dest="output_resolution", type=_positive_float,
                    metavar="MM",
                    help="isotropic voxel size of the output (default: the finest input "
                         "spacing, at most 1 mm)")
    sr.add_argument("--planes", nargs="+", choices=PLANES,
                    help="slicing planes fused into the result; fewer is faster (default: all "
                         "three)")
    sr.add_argument("--adapt", choices=ADAPT_MODES,
                    help="auto: fine-tune a copy of the student on the scan's own sharp "
                         "in-plane detail before SR, for inputs whose coarsest spacing is >= "
                         "1.5x their finest (isotropic inputs are skipped with a log line); "
                         "off: never (default: off)")
    sr.add_argument("--adapt-steps", dest="adapt_steps", type=_positive_int,
                    help="optimisation steps of --adapt auto (default: 300)")
    sr.add_argument("--slice-profile", dest="slice_profile", choices=SLICE_PROFILE_CHOICES,
                    help="slice-profile shape of the thick slices, told to the student "
                         "and simulated by --adapt auto: gaussian, box (as a sinc RF pulse "
                         "gives), or auto: read from each scan's spectrum, the student being "
                         "told box only on a clear reading (default: auto)")
    sr.add_argument("--input-consistency", dest="input_consistency", choices=CONSISTENCY_MODES,
                    help="auto: after the network, pull the output of an input with one "
                         "thick axis toward the scan's own slices (one back-projection step "
                         "with the told slice profile, else a box-heavy mixture, shrunk where "
                         "the residual is noise); off: the network's output as it is "
                         "(default: auto)")
    sr.add_argument("--flip-views", dest="flip_views", choices=FLIP_VIEW_CHOICES,
                    help="self-ensemble: average the restorations of 1, 2, 4 or 8 flipped "
                         "views of each scan (N views take N times as long); auto: 2 for "
                         "thick-slice inputs, which the student restores in seconds, 1 for "
                         "other inputs and for diffusion draws (default: auto)")
    sr.add_argument("--device", type=_device, help="auto, cpu, cuda or cuda:N (default: auto)")
    sr.add_argument("--seed", type=int,
                    help="random seed; a fixed seed gives identical output (default: 0)")
    return parser


def strip_prefix(label: str, prefix: str) -> str:
    return label[len(prefix):] if label.startswith(prefix) else label


def expand_labels(values: list[str] | None, prefix: str) -> tuple[str, ...]:
    """Labels with or without the entity prefix; a file contributes one label per token."""
    if not values:
        return ()
    labels: list[str] = []
    for value in values:
        path = Path(value)
        tokens = path.read_text().split() if path.is_file() else [value]
        for token in tokens:
            label = strip_prefix(token.strip(), prefix)
            if not _LABEL.match(label):
                raise UserError(f"invalid {prefix[:-1]} label {token!r}", ExitCode.USAGE)
            if label not in labels:
                labels.append(label)
    return tuple(labels)


def read_filter_file(path: Path) -> dict[str, dict[str, Any]]:
    try:
        filters = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: BIDS filter file not found", ExitCode.USAGE) from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})", ExitCode.USAGE) from None
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise UserError(
            f'{path}: expected an object of queries per suffix, e.g. {{"t1w": {{"run": 1}}}}',
            ExitCode.USAGE,
        )
    unknown = sorted(set(k.lower() for k in filters) - {"t1w", "t2w"})
    if unknown:
        raise UserError(f"{path}: unknown filter key(s) {unknown}; use t1w and/or t2w",
                        ExitCode.USAGE)
    return {key.lower(): value for key, value in filters.items()}


def is_within(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


NOT_IN_CONFIG = {"config_file", "help", "version"}


def config_tokens(parser: argparse.ArgumentParser, values: dict[str, Any],
                  path: Path) -> list[str]:
    """A TOML config as command-line tokens, so it goes through the same parsing and checks.

    Keys are long option names with ``-`` or ``_`` (``participant-label``, ``mem``, ``mem_gb``);
    ``true`` turns a flag on; a list gives several values.
    """
    options = {}
    for action in parser._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and action.dest not in NOT_IN_CONFIG:
                options[flag[2:].replace("_", "-")] = (flag, action)
    unknown = sorted(key for key in values if key.replace("_", "-") not in options)
    if unknown:
        raise UserError(f"{path}: unknown setting(s) {', '.join(unknown)}; any long option "
                        f"of 'bids_mrisr --help' is a key ({', '.join(sorted(options))})",
                        ExitCode.USAGE)
    tokens: list[str] = []
    for key, value in values.items():
        flag, action = options[key.replace("_", "-")]
        if isinstance(action, argparse._StoreTrueAction | argparse._CountAction):
            if not isinstance(value, bool | int):
                raise UserError(f"{path}: {key} must be true or false, got {value!r}",
                                ExitCode.USAGE)
            tokens += [flag] * (int(value) if isinstance(action, argparse._CountAction)
                                else int(bool(value)))
        elif isinstance(value, list):
            tokens += [flag, *(str(item) for item in value)]
        elif isinstance(value, dict | bool):
            raise UserError(f"{path}: {key} takes a value, not {value!r}", ExitCode.USAGE)
        else:
            tokens += [f"{flag}={value}"]
    return tokens


def _parse_config(parser: argparse.ArgumentParser, args: argparse.Namespace
                  ) -> dict[str, Any]:
    """Values the config file sets (by dest), parsed exactly as flags are."""
    values = read_toml(args.config_file)
    tokens = config_tokens(parser, values, args.config_file)
    positional = [str(args.bids_dir), str(args.output_dir), args.analysis_level]
    try:
        parsed = parser.parse_args(positional + tokens)
    except UserError as err:
        raise UserError(f"{args.config_file}: {err}", ExitCode.USAGE) from None
    defaults = parser.parse_args(positional)
    return {key: value for key, value in vars(parsed).items()
            if value != getattr(defaults, key)}


def build_settings(argv: list[str]) -> Settings:
    """Parse ``argv`` into validated :class:`Settings` (raises UserError with an exit code)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.analysis_level not in ANALYSIS_LEVELS:
        raise UserError(
            f"unknown analysis level {args.analysis_level!r}; use participant or group",
            ExitCode.UNKNOWN_LEVEL,
        )
    toml_values = _parse_config(parser, args) if args.config_file else {}
    cli_values: dict[str, Any] = {
        key: getattr(args, key)
        for key in ("nprocs", "omp_nthreads", "mem_gb", "device", "skip_bids_validation",
                    "reports_only", "participant_labels", "session_labels", "bids_filter_file",
                    "use_plugin",
                    "model", "weights", "steps", "num_samples", "output_resolution", "seed",
                    "verbose", "work_dir", "adapt", "adapt_steps", "slice_profile", "planes",
                    "flip_views", "input_consistency", "clean_workdir")
    }
    values = merge(cli_values, toml_values)

    bids_dir = args.bids_dir.expanduser().absolute()
    output_dir = args.output_dir.expanduser().absolute()
    work_dir = Path(values.pop("work_dir", None) or Path.cwd() / "work").expanduser().absolute()
    if not bids_dir.is_dir():
        raise UserError(f"{bids_dir}: input BIDS directory does not exist", ExitCode.NO_INPUT)
    for name, path in (("output", output_dir), ("work", work_dir)):
        if is_within(path, bids_dir):
            raise UserError(
                f"{path}: the {name} directory is inside the input dataset {bids_dir}; "
                "nothing may be written there, choose a directory outside it",
                ExitCode.USAGE,
            )
    if is_within(bids_dir, output_dir):
        raise UserError(f"{output_dir}: the output directory contains the input dataset",
                        ExitCode.USAGE)

    labels = values.pop("participant_labels", None)
    sessions = values.pop("session_labels", None)
    filter_file = values.pop("bids_filter_file", None)
    filters = read_filter_file(filter_file) if filter_file is not None else {}
    if values.get("weights") is not None:
        values["weights"] = Path(values["weights"]).expanduser().absolute()
    plugin_file = values.pop("use_plugin", None)
    if plugin_file is not None:
        values["nipype_plugin"], values["nipype_plugin_args"] = read_plugin_file(
            Path(plugin_file).expanduser())
    if values.get("planes") is not None:
        values["planes"] = tuple(values["planes"])
    values = {key: value for key, value in values.items() if value is not None}
    try:
        return Settings(
            bids_dir=bids_dir,
            output_dir=output_dir,
            analysis_level=args.analysis_level,
            work_dir=work_dir,
            participant_labels=expand_labels(labels, "sub-"),
            session_labels=expand_labels(sessions, "ses-"),
            bids_filters=filters,
            **values,
        )
    except TypeError as err:
        raise UserError(f"invalid settings: {err}", ExitCode.USAGE) from None

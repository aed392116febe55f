"""``bids_mrisr train``: train the MoEDiff-SR teacher on local data, then distil the student.

High-resolution T1w/T2w runs of a BIDS dataset (finest spacing <= ``--max-spacing``) are
preprocessed exactly as at inference (RAS+, N4, robust normalisation, isotropic grid) and used
as ground truth; the degradation model simulates the low-resolution inputs. Bundled volumes
(nilearn's MNI152 T1, pydeface's whole-head mean when installed) add anatomy and a whole-head
field of view. Held-out runs (``--validation-label``) give the metrics stored with the weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bids_mrisr.bids.training_data import collect_volumes
from bids_mrisr.cli.parser import (
    UsageParser,
    _positive_int,
    expand_labels,
    is_within,
    resolved_path,
)
from bids_mrisr.cli.recipe_file import (
    REGRESSION_LIKE,
    RecipeOptions,
    keys_help,
    read_recipe_file,
)
from bids_mrisr.errors import ExitCode, UserError
from bids_mrisr.progress import progress_callback

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bids_mrisr.sr.networks.config import ModelConfig
    from bids_mrisr.sr.training.regression import RegressionRecipe

LOGGER = logging.getLogger("bids_mrisr")


class _RealDefaults(argparse.HelpFormatter):
    """Show a default only where there is one (argparse's own formatter prints 'None')."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        formatter_class=_RealDefaults,
        prog="bids_mrisr train",
        description="Train super-resolution networks on local high-resolution data. The "
                    "default recipe (regression) trains the student only and writes "
                    "OUT/student; --recipe moe trains the MoEDiff-SR teacher (OUT/teacher); "
                    "--recipe diffusion trains a diffusion teacher, then distils a student "
                    "(both). Use the folder with --weights.",
        epilog="exit codes: 0 success; 64 usage error (an option the --recipe does not use, "
               "a bad --recipe-file key or value, a --resume with other recipe options); 130 "
               "interrupted by Ctrl-C or SIGTERM, the state saved for --resume "
               "(docs/training.md)",
    )
    parser.add_argument("bids_dir", type=resolved_path, nargs="?",
                        help="BIDS dataset with high-resolution T1w/T2w runs (optional with "
                             "bundled volumes)")
    parser.add_argument("output_dir", type=resolved_path,
                        help="where checkpoints and logs are written")
    data = parser.add_argument_group("selecting data")
    data.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                      dest="participant_labels", help="subjects used for training")
    data.add_argument("--validation-label", nargs="+", metavar="LABEL", dest="validation_labels",
                      help="subjects held out for the metrics stored with the weights")
    data.add_argument("--max-spacing", type=float, default=1.2, metavar="MM",
                      help="runs coarser than this (mm) cannot serve as ground truth")
    data.add_argument("--no-bundled", action="store_true",
                      help="do not add nilearn's MNI152 T1 and pydeface's mean head")
    recipe = parser.add_argument_group("recipe and network")
    recipe.add_argument("--recipe", choices=("regression", "moe", "diffusion"),
                        default="regression",
                        help="regression: train the student as a posterior-mean regressor (the "
                             "shipped recipe); moe: the MoEDiff-SR teacher's experts and router "
                             "as a posterior-mean regressor (OUT/teacher, for --model teacher), "
                             "with the same options; diffusion: teacher then progressive "
                             "distillation")
    recipe.add_argument("--recipe-file", type=resolved_path, default=None, metavar="FILE",
                        help="TOML file of the recipe's experiment switches, recorded in the "
                             "checkpoint (provenance.recipe_options); absent keys keep their "
                             "defaults, keys the --recipe does not use are refused. Keys: "
                             f"{keys_help()} (docs/recipes/default.toml shows each with its "
                             "default)")
    recipe.add_argument("--preset", choices=("default", "tiny"), default="default",
                        help="network sizes: the shipped ones, or tiny ones for smoke tests")
    recipe.add_argument("--init-weights", type=resolved_path, nargs="+", default=None,
                        metavar="DIR",
                        help="regression recipe: fine-tune this checkpoint (e.g. the shipped "
                             "student) instead of starting from random weights; its "
                             "architecture is kept (with --acquisition-input a blind one "
                             "gains that input, starting at zero; res_blocks in "
                             "--recipe-file may deepen it). moe recipe: a MoE teacher "
                             "to fine-tune, or a student whose copies start every expert, "
                             "or several students (e.g. seeds of a campaign, or networks of "
                             "other widths or depths): expert k starts as the k-th, in turn, "
                             "with its architecture")
    recipe.add_argument("--acquisition-input", action="store_true",
                        help="regression and moe recipes: tell the network the thick-slice "
                             "factor, slice-profile shape and slice width of each simulated "
                             "scan (at "
                             "inference: from the header and the scan's spectrum), as the "
                             "shipped student is (docs/model-card.md)")
    recipe.add_argument("--scan-input", action="store_true",
                        help="regression and moe recipes: as --acquisition-input, and also "
                             "tell the network its input's noise level and how many other "
                             "axes are still coarse (at inference: read from each pass's "
                             "input and the header's geometry); for the multi-axis variant")
    recipe.add_argument("--base-width", type=_positive_int, default=None, metavar="C",
                        help="regression recipe, new networks: channels of the student's "
                             "first U-Net level (the shipped student has 16; 32 is about 4x "
                             "the parameters and compute)")
    budgets = parser.add_argument_group("budgets")
    budgets.add_argument("--student-steps", type=int, default=20000, metavar="N",
                         help="optimisation steps of the regression and moe recipes")
    budgets.add_argument("--student-minutes", type=float, default=None, metavar="MINUTES",
                         help="time cap of the regression and moe recipes; the learning-rate "
                              "schedule then follows whichever of steps and minutes runs out "
                              "first")
    budgets.add_argument("--stop-after", type=float, default=None, metavar="MINUTES",
                         help="regression and moe recipes: end this sitting after MINUTES, "
                              "saving the resumable state and a snapshot of the weights; the "
                              "learning-rate schedule keeps following --student-steps, so "
                              "sittings resumed with --resume add up to one run (Ctrl-C or "
                              "SIGTERM also save the state)")
    budgets.add_argument("--stop-at-step", type=_positive_int, default=None, metavar="STEP",
                         help="regression and moe recipes: end this sitting once the run "
                              "reaches STEP, as --stop-after does (a snapshot at a chosen step "
                              "of the schedule)")
    budgets.add_argument("--teacher-minutes", type=float, default=20.0, metavar="MINUTES",
                         help="diffusion recipe: time budget of the teacher")
    budgets.add_argument("--distill-minutes", type=float, default=15.0, metavar="MINUTES",
                         help="total time for all distillation rounds")
    budgets.add_argument("--teacher-steps", type=int, default=8, metavar="N",
                         help="DDIM steps of the teacher that round 0 of distillation halves")
    budgets.add_argument("--skip-teacher", action="store_true",
                         help="reuse OUT/teacher and only distil the student")
    execution = parser.add_argument_group("execution")
    execution.add_argument("--batch-size", type=int, default=8, metavar="N",
                           help="crops per optimisation step (per process under torchrun)")
    execution.add_argument("--seed", type=int, default=0, metavar="N",
                           help="seed of the initial weights and of the simulated acquisitions")
    execution.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads")
    execution.add_argument("--device", default="auto",
                           help="auto, cpu, cuda or cuda:N (regression and moe recipes; bf16 "
                                "autocast on GPUs; under torchrun each process takes its local "
                                "GPU)")
    execution.add_argument("--workers", type=int, default=0, metavar="N",
                           help="DataLoader worker processes that degrade volumes and cut crops "
                                "beside the training step (0: in the training process)")
    execution.add_argument("--resume", action="store_true",
                           help="continue an interrupted regression or moe run, or the next "
                                "sitting of a campaign, from OUT/student (or "
                                "OUT/teacher)/train_state.pt: weights, optimiser, EMA, step, "
                                "schedule and (with --workers 0 on one process) the crop "
                                "sampler, exactly")
    return parser


def _check_device(name: str) -> None:
    from bids_mrisr.sr.device import resolve_device
    from bids_mrisr.sr.engine import SRError

    try:
        resolve_device(name)
    except SRError as exc:
        raise UserError(f"--device: {exc}", ExitCode.USAGE) from exc


def _fine_tune_configs(directories: list[Path], recipe: str) -> list[ModelConfig]:
    """The architectures of the checkpoints that ``--init-weights`` names (verified, sha256):
    one, or for ``--recipe moe`` several students, which may differ in width, levels and
    blocks per level (each expert keeps its student's)."""
    from bids_mrisr.sr.checkpoint import verify_checkpoint
    from bids_mrisr.sr.engine import SRError

    configs = []
    for directory in directories:
        try:
            _, config, _ = verify_checkpoint(directory)
        except SRError as exc:
            raise UserError(f"--init-weights: {exc}", ExitCode.USAGE) from exc
        if config.prediction_type != "mean":
            raise UserError(f"--init-weights {directory}: a {config.prediction_type}-prediction "
                            "network; the regression recipe fine-tunes posterior-mean networks",
                            ExitCode.USAGE)
        configs.append(config)
    if len(configs) > 1 and (recipe != "moe" or any(c.kind != "student" for c in configs)):
        raise UserError(f"--init-weights: {len(configs)} checkpoints; only --recipe moe starts "
                        "from several, each a student (expert k starts as the k-th)",
                        ExitCode.USAGE)
    from bids_mrisr.sr.networks.config import ModelConfig

    for directory, config in zip(directories[1:], configs[1:], strict=True):
        try:
            ModelConfig.upcycled_teacher(configs[0], others=[config])
        except ValueError as exc:
            raise UserError(f"--init-weights {directory}: not an expert beside "
                            f"{directories[0]}: {exc}", ExitCode.USAGE) from None
    return configs


def _recipe_config(args: argparse.Namespace, options: RecipeOptions, kind: str, tiny: bool,
                   init_config: ModelConfig | None,
                   other_students: Sequence[ModelConfig] = ()) -> ModelConfig:
    """The network a regression-style recipe trains: the ``--init-weights`` checkpoint's (a
    student, with ``other_students`` the rest of them, upcycled into a teacher for
    ``--recipe moe``), else the default or tiny preset."""
    import dataclasses

    from bids_mrisr.sr.networks.config import ACQUISITION_FEATURES, SCAN_FEATURES, ModelConfig

    if init_config is not None and kind == "teacher" and init_config.kind == "student":
        config = ModelConfig.upcycled_teacher(init_config, router_top_k=options.router_top_k,
                                              others=other_students)
    elif init_config is not None:
        config = init_config
    elif kind == "teacher":  # told the acquisition, as the shipped student is
        base = ModelConfig.tiny_teacher() if tiny else ModelConfig.teacher_default()
        config = dataclasses.replace(base, prediction_type="mean",
                                     acquisition_features=ACQUISITION_FEATURES,
                                     router_top_k=options.router_top_k)
    else:
        base = ModelConfig.tiny_student() if tiny else ModelConfig.student_default()
        config = dataclasses.replace(base, prediction_type="mean")
    if args.scan_input:
        config = dataclasses.replace(config, acquisition_features=SCAN_FEATURES)
    elif args.acquisition_input:
        config = dataclasses.replace(config, acquisition_features=ACQUISITION_FEATURES)
    if args.base_width is not None:
        if kind != "student" or init_config is not None:
            raise ValueError("--base-width sets the width of a new student (not with "
                             "--init-weights)")
        config = dataclasses.replace(config, base_width=args.base_width)
    if not options.train_experts and init_config is None:  # a moe-recipe key
        raise ValueError("train_experts = false keeps the experts as --init-weights starts "
                         "them: give --init-weights")
    if options.res_blocks is not None:  # a regression-recipe key (recipe_file.py)
        if init_config is not None and options.res_blocks < init_config.num_res_blocks:
            raise ValueError(f"res_blocks {options.res_blocks}: fewer than the "
                             f"{init_config.num_res_blocks} of --init-weights")
        config = dataclasses.replace(config, num_res_blocks=options.res_blocks)
    if options.channel_mults is not None:  # a regression-recipe key, like res_blocks
        if init_config is not None:
            raise ValueError("channel_mults shapes a new student (not with --init-weights)")
        config = dataclasses.replace(config, channel_mults=options.channel_mults)
    return config


def network_config(args: argparse.Namespace, options: RecipeOptions, tiny: bool,
                   init_config: ModelConfig | None,
                   other_students: Sequence[ModelConfig] = ()) -> ModelConfig:
    """:func:`_recipe_config`, its problems as usage errors (before any preprocessing)."""
    kind = "teacher" if args.recipe == "moe" else "student"
    try:
        config = _recipe_config(args, options, kind, tiny, init_config, other_students)
    except ValueError as exc:  # e.g. router_top_k larger than the number of experts
        raise UserError(f"--recipe {args.recipe}: {exc}", ExitCode.USAGE) from None
    if config.kind != kind:
        raise UserError(f"--init-weights {args.init_weights[0]}: a {config.kind}; --recipe "
                        f"{args.recipe} trains a {kind}", ExitCode.USAGE)
    return config


def regression_recipe(args: argparse.Namespace, options: RecipeOptions) -> RegressionRecipe:
    """What the regression and moe recipes train with: the budgets and devices of the command
    line, the experiment switches of the recipe file."""
    from bids_mrisr.sr.training.regression import RegressionRecipe

    return RegressionRecipe(steps=args.student_steps, minutes=args.student_minutes,
                            batch_size=args.batch_size, lr=options.lr, seed=args.seed,
                            crop=options.crop, factor_range=options.factor_range,
                            device=args.device, workers=args.workers,
                            zoom_range=(options.zoom_augment, 1.0),
                            multi_axis_rate=options.multi_axis_rate, profiles=options.profiles,
                            train_experts=options.train_experts,
                            stop_minutes=args.stop_after, stop_step=args.stop_at_step)


def _train_regression(args: argparse.Namespace, options: RecipeOptions,
                      train: list[np.ndarray], val: list[np.ndarray], provenance: dict,
                      output_dir: Path, started: float, config: ModelConfig) -> int:
    """The shipped recipe: the student as a direct posterior-mean regressor; with ``--recipe
    moe`` the MoE teacher the same way (``config``: from :func:`network_config`)."""
    from bids_mrisr.sr.training.regression import train_mean_regressor

    kind = config.kind
    try:
        sha = train_mean_regressor(
            train, config, output_dir / kind, regression_recipe(args, options),
            progress=progress_callback(f"{kind} training", "step"), val_volumes=val or None,
            provenance=provenance, resume=args.resume, init_from=args.init_weights,
            record=provenance["recipe_options"])
    except ValueError as exc:  # e.g. a saved state of another network
        raise UserError(f"--resume: {exc}", ExitCode.USAGE) from None
    except KeyboardInterrupt:
        LOGGER.error("interrupted; the training state is saved in %s: add --resume to "
                     "continue", output_dir / kind)
        return 130
    if sha is not None:  # rank 0 (or the only process) wrote the checkpoint
        LOGGER.info("%s: sha256 %s; done in %.1f min: use --model %s --weights %s/%s", kind,
                    sha, (time.monotonic() - started) / 60, kind, output_dir, kind)
    return int(ExitCode.OK)


RECIPE_SPECIFIC = {
    REGRESSION_LIKE: ("student_steps", "student_minutes", "device", "workers", "resume",
                      "stop_after", "stop_at_step", "init_weights", "acquisition_input",
                      "scan_input"),
    ("regression",): ("base_width",),
    ("diffusion",): ("teacher_minutes", "distill_minutes", "teacher_steps", "skip_teacher"),
}
"""Options (by dest) that only some recipes use; every other option serves all three."""


def _refuse_options_of_other_recipes(parser: argparse.ArgumentParser,
                                     args: argparse.Namespace) -> None:
    """Name each option given that ``--recipe`` does not use, rather than ignore it."""
    recipes_of = {dest: recipes for recipes, dests in RECIPE_SPECIFIC.items() for dest in dests}
    unused: dict[tuple[str, ...], list[str]] = {}
    for action in parser._actions:
        recipes = recipes_of.get(action.dest, (args.recipe,))
        if args.recipe not in recipes and getattr(args, action.dest) != action.default:
            unused.setdefault(recipes, []).append(action.option_strings[0])
    if unused:
        raise UserError(f"--recipe {args.recipe} does not use " + "; ".join(
            f"{', '.join(flags)} (--recipe {' or '.join(recipes)} only)"
            for recipes, flags in unused.items()), ExitCode.USAGE)


def _check_resumable(state_file: Path, record: dict) -> None:
    """Refuse, before any preprocessing, to resume a state saved with other recipe options."""
    from bids_mrisr.sr.training.loop import check_record, read_state_record

    try:
        check_record(state_file, read_state_record(state_file), record)
    except ValueError as exc:
        raise UserError(f"--resume: {exc}", ExitCode.USAGE) from None


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv)
    _refuse_options_of_other_recipes(parser, args)
    options = read_recipe_file(args.recipe_file, args.recipe)
    output_dir = args.output_dir.expanduser().absolute()
    if args.bids_dir is not None:
        if is_within(output_dir, args.bids_dir.expanduser().absolute()):
            raise UserError(f"{output_dir}: inside the input dataset; choose another folder",
                            ExitCode.USAGE)
    import torch

    from bids_mrisr.sr.networks.config import ModelConfig
    from bids_mrisr.sr.training.distill import DistillRecipe, distill_student
    from bids_mrisr.sr.training.loop import DiffusionRecipe, train_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    tiny = args.preset == "tiny"
    regression_config = None
    if args.recipe in ("regression", "moe"):
        _check_device(args.device)  # before minutes of preprocessing
        init_configs = ([] if args.init_weights is None
                        else _fine_tune_configs(args.init_weights, args.recipe))
        regression_config = network_config(args, options, tiny,
                                           init_configs[0] if init_configs else None,
                                           init_configs[1:])
        if args.resume:
            from bids_mrisr.sr.training.regression import STATE_FILE

            _check_resumable(output_dir / regression_config.kind / STATE_FILE,
                             options.record(args.recipe))
    found = collect_volumes(
        args.bids_dir.absolute() if args.bids_dir is not None else None,
        expand_labels(args.participant_labels, "sub-"),
        expand_labels(args.validation_labels, "sub-"), args.max_spacing,
        bundled=not args.no_bundled, cache=output_dir / "work")
    train, train_names, val, val_names = (found.train, found.train_names, found.val,
                                          found.val_names)
    LOGGER.info("training on %d volume(s): %s; held out: %s", len(train),
                ", ".join(train_names), ", ".join(val_names) or "none")
    provenance = {"training_volumes": train_names, "validation_volumes": val_names,
                  "seed": args.seed, "recipe": args.recipe,
                  "command": "bids_mrisr train " + " ".join(args.argv),
                  "recipe_file": str(args.recipe_file) if args.recipe_file else None,
                  "recipe_options": options.record(args.recipe)}
    teacher_dir = output_dir / "teacher"
    if regression_config is not None:
        return _train_regression(args, options, train, val, provenance, output_dir, started,
                                 regression_config)
    teacher_config = ModelConfig.tiny_teacher() if tiny else ModelConfig.teacher_default()
    student_config = ModelConfig.tiny_student() if tiny else ModelConfig.student_default()
    if not args.skip_teacher:
        train_teacher(train, teacher_config, teacher_dir,
                      DiffusionRecipe(minutes=args.teacher_minutes, batch_size=args.batch_size,
                                      seed=args.seed),
                      progress=progress_callback("teacher training", "step"),
                      val_volumes=val or None, provenance=dict(provenance))
    distill_student(teacher_dir, train, student_config, output_dir / "student",
                    DistillRecipe(teacher_steps=args.teacher_steps, minutes=args.distill_minutes,
                                  seed=args.seed),
                    progress=progress_callback("distillation", "step"),
                    val_volumes=val or None, provenance=dict(provenance))
    for kind in ("teacher", "student"):
        meta = json.loads((output_dir / kind / "model.json").read_text())
        metrics = meta.get("provenance", {}).get("metrics")
        LOGGER.info("%s: sha256 %s, held-out metrics %s", kind, meta.get("sha256"),
                    json.dumps(metrics) if metrics else "none (no --validation-label)")
    LOGGER.info("done in %.1f min: use --weights %s/student (or /teacher)",
                (time.monotonic() - started) / 60, output_dir)
    return int(ExitCode.OK)

"""The experiment switches of ``bids_mrisr train``, read from ``--recipe-file`` (TOML).

The command line keeps what every run needs (data, budgets, devices, resuming); the knobs that
change what is learned are the keys of one small file, typed and checked here once, recorded
whole in the checkpoint (``provenance.recipe_options``) and in the resumable state, so that a
run can be repeated and a resumed run cannot change them. ``docs/recipes/default.toml`` lists
every key with its default.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bids_mrisr.errors import ExitCode, UserError
from bids_mrisr.sr.options import PROFILES

REGRESSION_LIKE = ("regression", "moe")
"""The recipes that train a posterior-mean regressor and share its data pipeline."""


def _number(low: float, high: float, *, above_low: bool = False) -> Callable[[Any], float]:
    """A number (a TOML integer or float) in [low, high] (in (low, high] with above_low)."""
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        if value < low or (above_low and value == low) or value > high:
            raise ValueError(f"must be {'>' if above_low else '>='} {low:g} and <= {high:g}, "
                             f"got {value!r}")
        return float(value)
    return parse


def _integer(low: int) -> Callable[[Any], int]:
    """A TOML integer >= low."""
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if value < low:
            raise ValueError(f"must be >= {low}, got {value}")
        return value
    return parse


def _boolean(value: Any) -> bool:
    """A TOML boolean."""
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _factor_range(value: Any) -> tuple[float, float]:
    """[low, high] thick-slice factors, 1 < low <= high."""
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"expected a list of two numbers [low, high], got {value!r}")
    low, high = (_number(1.0, 16.0, above_low=True)(item) for item in value)
    if low > high:
        raise ValueError(f"low must not exceed high, got {value!r}")
    return low, high


def _profiles(value: Any) -> tuple[str, ...]:
    """A non-empty list of slice-profile shapes (order kept, repeats dropped)."""
    if (not isinstance(value, list) or not value
            or any(item not in PROFILES for item in value)):
        raise ValueError(f"expected a non-empty list of {', '.join(PROFILES)}, got {value!r}")
    return tuple(dict.fromkeys(value))


def _level_widths(value: Any) -> tuple[int, ...]:
    """Two to five positive integers, one width multiplier per U-Net level."""
    if (not isinstance(value, list) or not 2 <= len(value) <= 5
            or any(isinstance(item, bool) or not isinstance(item, int) or item < 1
                   for item in value)):
        raise ValueError(f"expected a list of 2 to 5 positive integers, got {value!r}")
    return tuple(value)


def _option(default: Any, parse: Callable[[Any], Any], recipes: tuple[str, ...],
            text: str) -> Any:
    return field(default=default, metadata={"parse": parse, "recipes": recipes, "help": text})


@dataclass(frozen=True)
class RecipeOptions:
    """Every experiment switch, at today's default unless the recipe file sets it."""

    lr: float = _option(2e-3, _number(0.0, 1.0, above_low=True), REGRESSION_LIKE,
                        "peak learning rate (after warm-up; cosine decay follows)")
    crop: int = _option(64, _integer(16), REGRESSION_LIKE, "training crop side in pixels")
    factor_range: tuple[float, float] = _option(
        (1.5, 5.0), _factor_range, REGRESSION_LIKE,
        "thick-slice factors drawn for the simulated scans, [low, high]")
    zoom_augment: float = _option(
        1.0, _number(0.5, 1.0), REGRESSION_LIKE,  # below 0.5 a head shrinks under a crop
        "resample each ground truth by a zoom drawn from [zoom_augment, 1] first (1 = off)")
    multi_axis_rate: float = _option(
        0.0, _number(0.0, 1.0), REGRESSION_LIKE,
        "share of simulated scans coarse along one or two more axes, kept coarse in the target")
    profiles: tuple[str, ...] = _option(
        PROFILES, _profiles, REGRESSION_LIKE,
        "slice-profile shapes simulated; one shape trains a network for scans told that shape")
    res_blocks: int | None = _option(
        None, _integer(1), ("regression",),
        "residual blocks per U-Net level (absent: --init-weights' or the preset's); more than "
        "the checkpoint's deepens it, the new blocks starting as the identity")
    channel_mults: tuple[int, ...] | None = _option(
        None, _level_widths, ("regression",),
        "width multiplier of each U-Net level of a new student (absent: the preset's); one "
        "more level doubles the context each output pixel sees, at little cost per step")
    router_top_k: int = _option(2, _integer(0), ("moe",),
                                "experts each routing token keeps (0: all, dense)")
    train_experts: bool = _option(True, _boolean, ("moe",),
                                  "false: train the router only, the experts frozen as "
                                  "--init-weights started them")

    def record(self, recipe: str) -> dict[str, Any]:
        """The values ``recipe`` uses, as JSON (lists for tuples): what the checkpoint's
        provenance and the resumable state keep."""
        return {spec.name: _plain(getattr(self, spec.name)) for spec in fields(self)
                if recipe in spec.metadata["recipes"]}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def keys_help() -> str:
    """The keys for ``train --help``, each with the recipes that use it where not all do."""
    return ", ".join(spec.name + ("" if spec.metadata["recipes"] == REGRESSION_LIKE
                                  else f" ({'/'.join(spec.metadata['recipes'])})")
                     for spec in fields(RecipeOptions))


def options_from(values: Mapping[str, Any], recipe: str, source: Path) -> RecipeOptions:
    """Check ``values`` (a recipe file's keys; ``-`` or ``_`` in names) for ``recipe``."""
    specs = {spec.name: spec for spec in fields(RecipeOptions)}
    parsed: dict[str, Any] = {}
    for key, value in values.items():
        spec = specs.get(key.replace("-", "_"))
        if spec is None:
            raise UserError(f"{source}: unknown key {key!r} (recipe keys: "
                            f"{', '.join(specs)})", ExitCode.USAGE)
        if recipe not in spec.metadata["recipes"]:
            raise UserError(f"{source}: {key} applies to --recipe "
                            f"{' or '.join(spec.metadata['recipes'])}, not --recipe {recipe}",
                            ExitCode.USAGE)
        try:
            parsed[spec.name] = spec.metadata["parse"](value)
        except ValueError as err:
            raise UserError(f"{source}: {key}: {err}", ExitCode.USAGE) from None
    return RecipeOptions(**parsed)


def read_recipe_file(path: Path | None, recipe: str) -> RecipeOptions:
    """The options of ``--recipe-file`` for ``recipe`` (every default without a file)."""
    if path is None:
        return RecipeOptions()
    try:
        with open(path, "rb") as handle:
            values = tomllib.load(handle)
    except (FileNotFoundError, IsADirectoryError):
        raise UserError(f"{path}: recipe file not found", ExitCode.USAGE) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid TOML ({err})", ExitCode.USAGE) from None
    return options_from(values, recipe, path)

"""SROptions cross process and workflow boundaries as JSON and come back equal, every field."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import pytest

from bids_mrisr.sr.options import SROptions


def _sample(hint: typing.Any) -> typing.Any:
    """A value of type ``hint`` that no field has as its default (a type this test does not
    know fails, so that a new kind of field gets a round-trip case here)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _sample(inner)
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        items = args[:1] * 2 if args[-1] is Ellipsis else args
        return tuple(_sample(arg) for arg in items)
    samples = {str: "coronal", int: 5, float: 0.25, bool: False, Path: Path("/weights/x")}
    if hint not in samples:
        raise AssertionError(f"no sample value for {hint!r}: add one to this test")
    return samples[hint]


HINTS = typing.get_type_hints(SROptions)
FIELDS = [item.name for item in dataclasses.fields(SROptions)]


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_round_trips_with_its_type(name):
    changed = dataclasses.replace(SROptions(), **{name: _sample(HINTS[name])})
    assert getattr(changed, name) != getattr(SROptions(), name)
    back = SROptions.from_json(changed.to_json())
    assert back == changed
    assert type(getattr(back, name)) is type(getattr(changed, name))


def test_all_fields_at_once_and_none_where_allowed():
    changed = SROptions(**{name: _sample(HINTS[name]) for name in FIELDS})
    assert SROptions.from_json(changed.to_json()) == changed
    nones = {item.name: None for item in dataclasses.fields(SROptions) if item.default is None}
    assert nones and SROptions.from_json(SROptions(**nones).to_json()) == SROptions(**nones)


def test_split_into_parts_and_merged_back():
    options = SROptions(weights=Path("/w"), threads=3, seed=9, blurred_axes=(2,))
    runtime = options.to_json(only=SROptions.RUNTIME_FIELDS)
    result = options.to_json(only=[n for n in FIELDS if n not in SROptions.RUNTIME_FIELDS])
    assert '"threads"' in runtime and '"threads"' not in result
    assert SROptions.from_json(result, runtime) == options
    assert SROptions.from_json(result).threads is None  # a missing field takes its default
    assert SROptions.RUNTIME_FIELDS <= set(FIELDS)

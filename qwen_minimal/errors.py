"""The error for bad input, and the two checks every settings dataclass makes.

A setting, an argument or a file that the user gave (or that a run needs) and that is
wrong raises InputError, whose message says what to do. The command-line tools print an
InputError as one line and exit with status 2; any other exception is a bug and keeps
its traceback.
"""

from __future__ import annotations

import dataclasses
import types
import typing


class InputError(ValueError):
    """Bad input: a setting, an argument or a file. The message names it and says how to
    fix it."""


class MissingInputError(InputError, FileNotFoundError):
    """A file or folder that the user named, or that a run needs, is not there."""


def check_known_fields(cls, values: dict) -> None:
    """InputError if `values` has keys that are not fields of the dataclass `cls`,
    listing the valid ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(
            f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}"
        )


def check_field_types(cls, values: dict) -> None:
    """InputError naming the first of `values` whose type is not its field's in the
    dataclass `cls` (a whole number passes for a float; true and false only for a
    bool), e.g. a config.json that says "hidden_size": "32". Unknown names are
    check_known_fields' to report."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if name not in hints:
            continue
        hint = hints[name]
        kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        # list[str] -> list; JSON writes a tuple as a list, and a whole float as an int
        kinds = tuple(typing.get_origin(k) or k for k in kinds)
        kinds += (int,) * (float in kinds) + (list,) * (tuple in kinds)
        if not all(isinstance(k, type) for k in kinds):  # (Literal and the like)
            continue
        if isinstance(value, kinds) and not (
            isinstance(value, bool) and bool not in kinds
        ):
            continue
        wanted = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise InputError(f"{name}={value!r} should be {wanted}")


def check_at_least(minimum: int, **values: int) -> None:
    """InputError naming the first of `values` (name=value) that is below `minimum`."""
    for name, value in values.items():
        if value < minimum:
            raise InputError(f"{name} must be at least {minimum}, got {value}")

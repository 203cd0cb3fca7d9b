"""The error for bad input, and the two checks every settings dataclass makes.

A setting, an argument or a file that the user gave (or that a run needs) and that is
wrong raises InputError, whose message says what to do. The command-line tools print an
InputError as one line and exit with status 2; any other exception is a bug and keeps
its traceback.
"""

from __future__ import annotations

import dataclasses


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


def check_at_least(minimum: int, **values: int) -> None:
    """InputError naming the first of `values` (name=value) that is below `minimum`."""
    for name, value in values.items():
        if value < minimum:
            raise InputError(f"{name} must be at least {minimum}, got {value}")

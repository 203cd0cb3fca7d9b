"""What the command-line tools share: options made from the fields of a settings
dataclass, and the rule that bad input (InputError) ends a tool with one line and status
2, while anything else keeps its traceback."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import typing

from ..errors import InputError


def exit_on_input_error(main):
    """Decorate a tool's main(argv): an InputError becomes `error: <message>` on stderr
    and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def parse_value(text: str, hint) -> object:
    """Command-line text -> a value of the field's type (int, float, str, bool, or X |
    None)."""
    args = typing.get_args(hint)
    if type(None) in args:
        if text.lower() in ("none", "null"):
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a boolean: use true or false"
        )
    try:
        return hint(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a valid {hint.__name__}"
        ) from None


def add_field_options(
    group,
    cls,
    prefix: str = "",
    defaults: typing.Callable[[str], str] | None = None,
    skip: tuple[str, ...] = (),
) -> None:
    """An option --{prefix}{field} VALUE for every field of the dataclass `cls` (but
    `skip`), typed by the field's annotation, with the field's metadata["help"] and
    defaults(field name) in its help text. Options that are not given are absent from
    the parsed namespace (so that they override nothing)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        help, hint = f.metadata.get("help", ""), hints[f.name]
        choices = f.metadata.get("choices")
        if choices:
            help += f"; one of {', '.join(choices)}"
        default = f" ({defaults(f.name)})" if defaults else ""
        group.add_argument(
            f"--{prefix}{f.name}",
            dest=prefix + f.name,
            default=argparse.SUPPRESS,
            metavar="VALUE",
            type=lambda text, hint=hint: parse_value(text, hint),
            help=f"{help}{default}".strip(),
        )


def reject_unknown(parser: argparse.ArgumentParser, unknown: list[str]) -> None:
    """parser.error listing every valid option, for options the parser did not know."""
    if unknown:
        options = [
            o for a in parser._actions for o in a.option_strings if o.startswith("--")
        ]
        parser.error(
            f"unknown option(s) {' '.join(unknown)}. Valid options: {' '.join(options)}"
        )

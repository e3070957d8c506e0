"""One convention for every petseg command line (`petseg`, `process.py`, `app.py`, `python -m training`).

- Options are spelled out: abbreviations are refused (`--no-rep` is not `--no-report`), so a typo or a
  future option can never be mistaken for another.
- `--help` shows every option's default.
- Folders: `--input` reads, `--output` writes (`--out` is accepted as its old spelling).
- Progress bars show on a terminal; `-q/--quiet` hides them (`process.py`, which runs in a container whose
  log is a file, is quiet unless given `--progress`).
- An error inside a subcommand is reported with that subcommand's usage, not the top level's.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

__all__ = ["DefaultsShown", "add_output", "command_parser", "parse_arguments", "subcommands"]


class DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` with each option's default, unless its help already says it or it has none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, argparse.SUPPRESS)
            or isinstance(action, (argparse._HelpAction, argparse._VersionAction))
            or not action.option_strings
        ):
            return text
        if isinstance(default, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in default):
            # As the command line takes it (`--thresholds 0.3 0.4`), not as a Python tuple.
            return (
                text
                + " (default: "
                + " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
                + ")"
            )
        return text + " (default: %(default)s)"


def command_parser(prog: str, description: str, **options: Any) -> argparse.ArgumentParser:
    """A parser that follows the convention above."""
    return argparse.ArgumentParser(
        prog=prog, description=description, allow_abbrev=False, formatter_class=DefaultsShown, **options
    )


class _Subcommands(argparse._SubParsersAction):
    def add_parser(self, name: str, **options: Any) -> argparse.ArgumentParser:  # type: ignore[override]
        options.setdefault("allow_abbrev", False)
        options.setdefault("formatter_class", DefaultsShown)
        if "help" in options and "description" not in options:
            options["description"] = options["help"]
        return super().add_parser(name, **options)


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """The parser's subcommands (`dest="command"`), each built like the parser itself."""
    parser.register("action", "parsers", _Subcommands)
    return parser.add_subparsers(dest="command", required=True, metavar="COMMAND")


def add_output(parser: argparse.ArgumentParser, dest: str = "output", **options: Any) -> None:
    """`--output DIR` (also spelled `--out`), the folder a command writes, into `args.<dest>`."""
    parser.add_argument("--output", "--out", dest=dest, metavar="DIR", **options)


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, reporting an unknown option with the usage of the subcommand it was given to."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = getattr(args, "command", None)
        target = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) and command in action.choices:
                target = action.choices[command]
        target.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args

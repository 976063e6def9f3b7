"""Command-line interface: ``eca-serve <command>``."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Iterator, Sequence

from eca_serve.errors import EcaServeError

Command = Callable[[argparse.Namespace], int]


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless it has no value to show or says it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        takes_value = action.nargs != 0 and bool(action.option_strings)
        if not takes_value or action.required or "default" in text or action.default in (None, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every sub-command's parser under it, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from all_parsers(child)


def build_parser() -> argparse.ArgumentParser:
    """The ``eca-serve`` parser with every sub-command registered."""
    from eca_serve.cli import drift_commands, export_commands, quantize_commands, serve_commands, train_commands, zoo_commands

    parser = argparse.ArgumentParser(prog="eca-serve", description="Serve ECA-Net classifiers and detectors.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    zoo_commands.register(sub)
    export_commands.register(sub)
    train_commands.register(sub)
    serve_commands.register(sub)
    drift_commands.register(sub)
    quantize_commands.register(sub)
    for each in all_parsers(parser):
        each.formatter_class = DefaultsHelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``eca-serve`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except EcaServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

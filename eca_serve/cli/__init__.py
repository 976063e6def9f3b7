"""Command-line interface: ``eca-serve <command>``."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from eca_serve.errors import EcaServeError

Command = Callable[[argparse.Namespace], int]


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

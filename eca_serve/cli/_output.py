"""Printing helpers shared by commands: JSON for machines, rich tables for people."""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence


def print_json(data: Any) -> None:
    """Indented JSON on stdout."""
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table on stdout (plain text when stdout is not a terminal)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title))
    for column in columns:
        table.add_column(Text(column))
    for row in rows:  # Text: brackets in docstrings ("[B, C]") are data, never rich markup
        table.add_row(*[Text(str(v)) for v in row])
    Console(width=max(100, len(columns) * 16)).print(table)

"""Printing helpers shared by commands: JSON for machines, rich tables for people."""

from __future__ import annotations

import json
import shutil
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
    for i, column in enumerate(columns):  # the first column (names) is never cut: the others wrap instead
        table.add_column(Text(column), no_wrap=i == 0, min_width=max([len(str(r[0])) for r in rows], default=0) if i == 0 else None)
    for row in rows:  # Text: brackets in docstrings ("[B, C]") are data, never rich markup
        table.add_row(*[Text(str(v)) for v in row])
    Console(width=table_width(len(columns))).print(table)


def table_width(columns: int) -> int:
    """The terminal's width (``COLUMNS`` or the terminal's size); not a terminal: 100, or 16 per column."""
    width = shutil.get_terminal_size((0, 0)).columns
    return width if width > 0 else max(100, columns * 16)

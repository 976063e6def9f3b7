"""The README's code blocks marked for testing: ``<!-- readme-test: KIND [note] -->`` right above a fence.

Parsed with markdown-it-py (the CommonMark parser), so a fence inside a list or after a table is found as a
reader sees it. Every fenced block must carry a marker: ``not-run: why`` for the few that cannot run in a
test, so no example is left out silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_MARKER = re.compile(r"^<!--\s*readme-test:\s*(?P<kind>[\w-]+)(?::?\s*(?P<note>.*?))?\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: its marker kind and note, language, text and first line (1-based)."""

    kind: str
    note: str
    language: str
    code: str
    line: int

    @property
    def id(self) -> str:
        return f"{self.kind}@L{self.line}"

    def steps(self) -> list[tuple[str, list[str]]]:
        """A bash block's commands, each with the output lines the README shows under it.

        ``\\`` continuations are joined and ``#`` tails cut; a whole-line comment that starts with ``# {`` or
        ``# [`` is the output shown for the command above it, other comment lines are prose.
        """
        joined = re.sub(r"\\\n\s*", " ", self.code)
        steps: list[tuple[str, list[str]]] = []
        for line in joined.splitlines():
            stripped = line.strip()
            if stripped.startswith(("# {", "# [")) and steps:
                steps[-1][1].append(stripped[2:])
                continue
            command = re.sub(r"\s+#.*$", "", stripped).strip()
            if command and not command.startswith("#"):
                steps.append((command, []))
        return steps

    def commands(self) -> list[str]:
        """The commands of `steps`, without their shown outputs."""
        return [command for command, _ in self.steps()]


def readme_blocks(path: Path = README) -> list[Block]:
    """Every fenced block of ``path`` with its marker; a block without one gets kind ``unmarked``."""
    tokens = MarkdownIt("commonmark").parse(path.read_text())
    blocks: list[Block] = []
    marker: tuple[str, str] | None = None
    for token in tokens:
        if token.type == "html_block":
            match = _MARKER.match(token.content.strip())
            marker = (match["kind"], match["note"] or "") if match else None
            continue
        if token.type == "fence":
            kind, note = marker or ("unmarked", "")
            line = token.map[0] + 1 if token.map else 0
            blocks.append(Block(kind, note, token.info.strip(), token.content, line))
        marker = None
    return blocks


def blocks_of(kind: str) -> list[Block]:
    """The blocks marked ``kind``, in README order."""
    return [b for b in readme_blocks() if b.kind == kind]

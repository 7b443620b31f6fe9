"""Just enough Markdown reading to check the docs against the code.

Fenced code blocks, inline code spans outside them, tables, links and the anchors
GitHub gives headings. Deliberately small: the docs are plain CommonMark/GFM written
by us, not arbitrary Markdown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")
_INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_TABLE_RULE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def doc_pages() -> list[Path]:
    """Every page under docs/, plus the top-level README that links into them."""
    return [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]


def label(path: Path, line: int | None = None) -> str:
    """`docs/x.md:12`, for test ids and messages."""
    where = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    return where if line is None else f"{where}:{line}"


@dataclass(frozen=True)
class CodeBlock:
    """A fenced code block: its info string's language, text and first line number."""

    path: Path
    line: int
    lang: str
    text: str


@dataclass(frozen=True)
class Table:
    """A GFM table: header cells and body rows, each cell as raw Markdown text."""

    path: Path
    line: int
    header: list[str]
    rows: list[list[str]]

    def column(self, index: int) -> list[str]:
        """The cells of one column (short rows give empty cells)."""
        return [row[index] if index < len(row) else "" for row in self.rows]


def code_blocks(path: Path) -> list[CodeBlock]:
    """The fenced code blocks of a page, in order."""
    blocks: list[CodeBlock] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    fence: str | None = None
    lang, start = "", 0
    body: list[str] = []
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if fence is None:
            match = _FENCE.match(stripped)
            if match:
                fence, lang, start, body = match.group(1), match.group(2).lower(), number, []
        elif stripped.startswith(fence) and not stripped[len(fence) :].strip():
            blocks.append(CodeBlock(path, start + 1, lang, "\n".join(body) + "\n"))
            fence = None
        else:
            body.append(line)
    return blocks


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, with their numbers."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if fence is None:
            match = _FENCE.match(stripped)
            if match:
                fence = match.group(1)
                continue
            out.append((number, line))
        elif stripped.startswith(fence) and not stripped[len(fence) :].strip():
            fence = None
    return out


def inline_code(text: str) -> list[str]:
    """The contents of the inline code spans in `text`."""
    return _INLINE_CODE.findall(text)


def prose_inline_code(path: Path) -> list[tuple[int, str]]:
    """Every inline code span outside fenced blocks, with its line number."""
    return [(n, span) for n, line in prose_lines(path) for span in inline_code(line)]


def links(path: Path) -> list[tuple[int, str]]:
    """Every link and image target outside fenced blocks, with its line number."""
    out: list[tuple[int, str]] = []
    for number, line in prose_lines(path):
        without_code = _INLINE_CODE.sub("", line)
        out.extend((number, target) for target in _LINK.findall(without_code))
    return out


def _split_row(line: str) -> list[str]:
    cells = line.strip()
    if cells.startswith("|"):
        cells = cells[1:]
    if cells.endswith("|"):
        cells = cells[:-1]
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", cells)]


def tables(path: Path) -> list[Table]:
    """The tables of a page (outside fenced blocks)."""
    found: list[Table] = []
    lines = prose_lines(path)
    index = 0
    while index + 1 < len(lines):
        number, line = lines[index]
        rule = lines[index + 1][1]
        if line.lstrip().startswith("|") and _TABLE_RULE.match(rule.strip()):
            rows: list[list[str]] = []
            index += 2
            while index < len(lines) and lines[index][1].lstrip().startswith("|"):
                rows.append(_split_row(lines[index][1]))
                index += 1
            found.append(Table(path, number, _split_row(line), rows))
        else:
            index += 1
    return found


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a page, numbered like GitHub does for repeats."""
    seen: dict[str, int] = {}
    result: set[str] = set()
    for _, line in prose_lines(path):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result

"""Refresh the configuration reference in README.md from the schemas: `python -m usjepa.config_reference`."""

from __future__ import annotations

import sys
from pathlib import Path

from usjepa.config import reference_markdown

START, END = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"


def refresh(readme: Path) -> bool:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START.strip()} / {END} markers")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    new = head + START + reference_markdown() + END + tail
    if new != text:
        readme.write_text(new)
        return True
    return False


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "README.md"
    print("updated" if refresh(path) else "up to date", path)

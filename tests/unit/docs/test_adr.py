"""Architecture decision records: unique numbers, the agreed sections."""

from __future__ import annotations

import re
from pathlib import Path

ADR_DIR = Path(__file__).resolve().parents[3] / "docs" / "adr"
NAME = re.compile(r"^(\d{4})-[a-z0-9-]+\.md$")
SECTIONS = ("Status", "Context", "Decision drivers", "Considered options", "Decision", "Consequences")


def _records() -> list[Path]:
    return sorted(p for p in ADR_DIR.glob("*.md") if p.name != "README.md")


def test_adr_files_are_named_and_numbered_uniquely() -> None:
    records = _records()
    assert records, "no ADRs found"
    numbers = []
    for path in records:
        match = NAME.match(path.name)
        assert match, f"{path.name} is not NNNN-short-title.md"
        numbers.append(match.group(1))
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    assert not duplicates, f"ADR numbers used twice: {duplicates}"


def test_adrs_have_the_agreed_sections() -> None:
    for path in _records():
        text = path.read_text()
        headings = {h.strip() for h in re.findall(r"^#+\s*(.+)$", text, flags=re.MULTILINE)}
        missing = [s for s in SECTIONS if s not in headings]
        assert not missing, f"{path.name} lacks sections {missing}"

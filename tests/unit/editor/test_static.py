"""The vendored front-end files are exactly the published ones recorded in VENDORED.md."""

from __future__ import annotations

import hashlib
import re

from editor.web import STATIC_DIR, TEMPLATES_DIR


def test_vendored_files_match_their_recorded_hashes() -> None:
    table = (STATIC_DIR / "VENDORED.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]+)`.*? \| ([0-9.]+) \| `([0-9a-f]{96})` \|$", table, re.M)
    assert {r[0] for r in rows} == {"htmx.min.js", "htmx-ext-sse.min.js"}
    for name, _package, _version, digest in rows:
        assert hashlib.sha384((STATIC_DIR / name).read_bytes()).hexdigest() == digest, name
    assert 'version:"2.0.11"' in (STATIC_DIR / "htmx.min.js").read_text()


def test_pages_load_scripts_only_from_the_app_itself() -> None:
    for template in TEMPLATES_DIR.rglob("*.html"):
        text = template.read_text()
        assert "://" not in re.sub(r'xmlns="[^"]*"', "", text), template  # no CDN, no external URL
        assert "<script>" not in text and "onclick=" not in text, template  # no inline script

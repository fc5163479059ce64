"""Documentation that is checked against the code."""

from __future__ import annotations

import re
from pathlib import Path

from datakit.schema import schema_table_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_format_doc_table_matches_schema():
    text = (DOCS / "format.md").read_text()
    m = re.search(r"<!-- schema-table:start -->\n(.*?)\n<!-- schema-table:end -->", text, re.S)
    assert m, "docs/format.md lost its schema-table markers"
    assert m.group(1).strip() == schema_table_markdown().strip()


def test_cli_doc_names_every_command():
    from datakit.cli import main

    text = (DOCS / "cli.md").read_text()
    for name in main.commands:
        assert f"datakit {name}" in text, f"docs/cli.md does not describe `datakit {name}`"

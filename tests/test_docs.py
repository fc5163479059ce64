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


def test_results_table_matches_its_records():
    """docs/results.md's CPU table (mean ± std per method and probe, and the paired differences)
    is what bench/compare.py's summary gives for docs/results_cpu_records.jsonl. Rows rebuilt from
    0.1-rounded differences may differ from the table's exact ones by one rounding step."""
    import json

    from bench.compare import summarise

    records = [json.loads(x) for x in (DOCS / "results_cpu_records.jsonl").read_text().splitlines()]
    methods = list(dict.fromkeys(r["method"] for r in records))
    summary = summarise(records, methods)
    text = (DOCS / "results.md").read_text()
    for m in methods:
        row = re.search(rf"^\| {re.escape(m)} \| ([^|]+) \| ([^|]+) \|", text, re.M)
        assert row, f"results.md has no table row for {m}"
        for cell, probe in zip(row.groups(), ("c5", "c3-c5"), strict=True):
            mean, std = (float(x) for x in re.findall(r"[\d.]+", cell))
            want = summary["table"][m][probe]
            assert abs(mean - 100 * want["mean"]) <= 0.11, (m, probe, cell)
            assert abs(std - 100 * want["std"]) <= 0.11, (m, probe, cell)
    for name, d in summary["paired"].items():
        m, base, probe = re.fullmatch(r"(\S+) - (\S+) \[(\S+)\]", name).groups()
        label = {"c5": "C5", "c3-c5": "C3-C5"}[probe]
        row = re.search(
            rf"^\| \**{re.escape(f'{m} - {base}, {label}')}\** \| [^|]+ \| \**([+-][\d.]+) ± ([\d.]+)",
            text,
            re.M,
        )
        assert row, f"results.md has no paired row for {name}"
        assert abs(float(row.group(1)) - 100 * d["mean"]) <= 0.11, (name, row.group(0))
        assert abs(float(row.group(2)) - 100 * d["std"]) <= 0.11, (name, row.group(0))

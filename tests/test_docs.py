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


PROBE_LABELS = {
    "c5": "C5",
    "c3-c5": "C3-C5",
    "ft-c5": "C5 fine-tune",
    "ft-c3-c5": "C3-C5 fine-tune",
}


def test_results_tables_match_their_records():
    """Each CPU table of docs/results.md (mean ± std per method and probe, and the paired
    differences), between ``<!-- records: FILE -->`` and ``<!-- records-end -->``, is what
    bench/compare.py's summary gives for docs/FILE. Rows rebuilt from 0.1-rounded differences may
    differ from the table's exact ones by one rounding step."""
    import json

    from bench.compare import PROBES, summarise

    text = (DOCS / "results.md").read_text()
    blocks = re.findall(r"<!-- records: (\S+) -->\n(.*?)<!-- records-end -->", text, re.S)
    assert len(blocks) >= 2, "results.md lost its records markers"
    for name, block in blocks:
        lines = (DOCS / name).read_text().splitlines()
        records = [json.loads(x) for x in lines]
        methods = list(dict.fromkeys(r["method"] for r in records))
        probes = [p for p in PROBES if all(p in r for r in records)]
        summary = summarise(records, methods, probes)
        for m in methods:
            cells = r" \| ".join(["([^|]+)"] * len(probes))
            row = re.search(rf"^\| {re.escape(m)} \| {cells} \|", block, re.M)
            assert row, f"{name}: its table has no row for {m}"
            for cell, probe in zip(row.groups(), probes, strict=True):
                mean, std = (float(x) for x in re.findall(r"[\d.]+", cell))
                want = summary["table"][m][probe]
                assert abs(mean - 100 * want["mean"]) <= 0.11, (name, m, probe, cell)
                assert abs(std - 100 * want["std"]) <= 0.11, (name, m, probe, cell)
        for pair, d in summary["paired"].items():
            m, base, probe = re.fullmatch(r"(\S+) - (\S+) \[(\S+)\]", pair).groups()
            label = re.escape(f"{m} - {base}, {PROBE_LABELS[probe]}")
            row = re.search(
                rf"^\| \**{label}\** \| [^|]+ \| \**([+-][\d.]+) ± ([\d.]+)", block, re.M
            )
            assert row, f"{name}: its table has no paired row for {pair}"
            assert abs(float(row.group(1)) - 100 * d["mean"]) <= 0.11, (name, row.group(0))
            assert abs(float(row.group(2)) - 100 * d["std"]) <= 0.11, (name, row.group(0))

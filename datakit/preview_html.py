"""The ``--html`` page of ``datakit preview``: one self-contained file (every image a base64 PNG data
URI, inline CSS, no script, nothing fetched), per sample the same panels as the sheet and the sample
JSON beside them."""

from __future__ import annotations

import base64
import html
import json
from typing import Any

import cv2
import numpy as np

from datakit.preview import PreviewRow
from datakit.preview_sheet import PANELS, Sheet

CAPTIONS = {
    "rgb": "RGB",
    "depth": "depth",
    "label": "labels",
    "view1": "view 1",
    "view2": "view 2",
    "crops": "crops + positive pairs",
}

STYLE = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 16px; background: #fafafa; color: #1e1e1e; }
h1 { font-size: 17px; margin: 0 0 4px; }
section { border-top: 1px solid #ddd; padding: 10px 0; }
h2 { font-size: 13px; font-weight: 600; margin: 0 0 6px; font-family: ui-monospace, monospace; }
.row { display: flex; gap: 16px; align-items: flex-start; }
.panels { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; }
figcaption { color: #666; font-size: 12px; }
img { display: block; image-rendering: pixelated; }
pre { margin: 0; font-size: 11px; background: #fff; border: 1px solid #e4e4e4; padding: 6px;
      max-width: 420px; max-height: 360px; overflow: auto; }
.legend { color: #555; font-size: 12px; }
"""


def data_uri(image: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def sample_json(row: PreviewRow) -> dict[str, Any]:
    """The sample's JSON plus where it was read from, its views' geometry and its pair counts."""
    views = {}
    for name, v in (("view1", row.views.view1), ("view2", row.views.view2)):
        b = v.box
        views[name] = {
            "coords": [round(float(c), 5) for c in v.coords],
            "flip": v.flip,
            "box": {"left": b.left, "top": b.top, "width": b.width, "height": b.height},
        }
    out: dict[str, Any] = {
        "key": row.sample.key,
        "shard": row.ref.shard,
        "offset": row.ref.offset,
        "meta": row.sample.meta,
        "views": views,
    }
    if row.sample.label is not None:
        out["classes_present"] = [int(c) for c in np.unique(row.sample.label)]
    if row.pairs is not None:
        out["pairs"] = {
            "grid": row.pairs.grid,
            "spatial": int(row.pairs.spatial.sum()),
            "kept": int(row.pairs.kept.sum()),
            "removed": int(row.pairs.removed.sum()),
        }
    return out


def page_html(sheet: Sheet, rows: list[PreviewRow], *, title: str, source: str) -> str:
    """The page as a string: a header, then per sample its panels (cropped from the sheet, with
    their colour bar, legend and axes) and its JSON. Image count = 6 x samples."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="legend">{esc(source)} &middot; crops: <b style="color:#005aff">view 1</b>, '
        '<b style="color:#ff8c00">view 2</b>; F = flipped, arrow = direction of the view\'s x axis; '
        'pairs: <b style="color:#00be3c">kept</b>, <b style="color:#e60000">removed by the depth '
        "filter</b> (dashed); depth invalid = black</p>",
    ]
    for row, rl in zip(rows, sheet.layout.rows):
        parts.append(
            f'<section id="{esc(row.sample.key)}"><h2>{esc(rl.header)}</h2><div class="row">'
        )
        parts.append('<div class="panels">')
        for name in PANELS:
            rect = rl.figures[name]
            parts.append(
                f'<figure><img class="panel" alt="{esc(name)} of {esc(row.sample.key)}" '
                f'width="{rect.w}" height="{rect.h}" src="{data_uri(sheet.crop(rect))}">'
                f"<figcaption>{esc(CAPTIONS[name])}</figcaption></figure>"
            )
        parts.append("</div>")
        parts.append(f"<pre>{esc(json.dumps(sample_json(row), indent=1, sort_keys=True))}</pre>")
        parts.append("</div></section>")
    parts.append("</body></html>")
    return "\n".join(parts)

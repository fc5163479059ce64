"""Render docs/converters/borehole_window.png: one window of the real LWD log, converted and read back.

    python docs/converters/borehole_window.py   # needs ../shared/fixtures (the P11-A-02A LAS file)

The breakout picks are illustrative (two lobes 180 degrees apart, one across the azimuth seam), not an
interpretation of this well.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from converters.borehole import BoreholeConfig, BoreholeConverter  # noqa: E402
from datakit.reader import iter_tar_members  # noqa: E402
from datakit.schema import decode  # noqa: E402
from datakit.writer import ConvertConfig, convert  # noqa: E402

LAS = REPO.parent / "shared" / "fixtures" / "las_lwd_image" / "P11-A-02_Composite_MEM_Image_NF.las"
WINDOW = 20  # 2206.0-2231.5 m: a dipping bed crosses the window as a sinusoid


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        picks = Path(tmp) / "picks.csv"
        picks.write_text(
            "depth_top,depth_bottom,azimuth_centre,azimuth_width\n"
            "2214.0,2222.0,10,40\n2214.0,2222.0,190,40\n"
        )
        conv = BoreholeConverter(
            BoreholeConfig(src=str(LAS), image="ABDC{}M", depth="GRAS{}M", breakouts=str(picks))
        )
        out = Path(tmp) / "ds"
        convert(conv, str(out), ConvertConfig(progress=False, rgb_format="png"))
        with open(out / "train-000000.tar", "rb") as f:
            sample = next(
                decode(k, m) for k, m in iter_tar_members(f, "shard") if k.endswith(f"{WINDOW:05d}")
            )
    m = sample.meta
    extent = (0.0, 360.0, m["bottom"], m["top"])
    fig, axes = plt.subplots(1, 3, figsize=(10, 4.6), sharey=True, constrained_layout=True)
    axes[0].imshow(sample.rgb, extent=extent, aspect="auto", interpolation="nearest")
    axes[0].set_title(
        f"image: {m['channels']['image']} ({m['image_unit']})\n8-bit, range {m['image_range'][0]:.2f}-{m['image_range'][1]:.2f}",
        fontsize=9,
    )
    depth = np.ma.masked_equal(sample.depth, 0)
    im = axes[1].imshow(
        depth, extent=extent, aspect="auto", cmap="viridis", interpolation="nearest"
    )
    fig.colorbar(
        im, ax=axes[1], label=f"depth member: {m['channels']['depth']} ({m['depth_unit']})"
    )
    axes[1].set_title(
        f"exogenous channel, {m['sectors']['depth']} sectors -> {m['width']} columns", fontsize=9
    )
    label = np.ma.masked_equal(sample.label, 255)
    axes[2].imshow(
        label, extent=extent, aspect="auto", cmap="Reds", vmin=0, vmax=1.3, interpolation="nearest"
    )
    axes[2].set_title(
        "label: breakouts (illustrative picks,\nwrapping across 0/360 deg); red = breakout",
        fontsize=9,
    )
    axes[0].set_ylabel(f"measured depth ({m['index_unit']})")
    for ax in axes:
        ax.set_xlabel(f"azimuth (deg from {m['azimuth_reference']})")
        ax.set_xticks([0, 90, 180, 270, 360])
    fig.suptitle(
        f"well {m['well']}, window {m['window']}: {m['top']:.1f}-{m['bottom']:.1f} {m['index_unit']}, "
        f"{m['height']} x {m['width']} px",
        fontsize=10,
    )
    fig.savefig(Path(__file__).with_name("borehole_window.png"), dpi=110)


if __name__ == "__main__":
    main()

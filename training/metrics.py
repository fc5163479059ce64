"""Training metrics: ``RUN/metrics.jsonl`` (one JSON object per logged step), TensorBoard event
files under ``RUN/tb`` and a progress bar. Only rank 0 writes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

METRICS_NAME = "metrics.jsonl"
TB_DIR = "tb"


class MetricsLog:
    """Appends records; on resume the records past the checkpoint's step are dropped first, so a
    killed-and-resumed run has one record per logged step."""

    def __init__(
        self,
        run: Path,
        *,
        enabled: bool,
        tensorboard: bool,
        progress: bool,
        start_step: int,
        total_steps: int,
    ) -> None:
        self.enabled = enabled
        self.path = run / METRICS_NAME
        self._tb: Any = None
        self._bar: Any = None
        if not enabled:
            return
        self._truncate_after(start_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run / TB_DIR), purge_step=start_step + 1)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True
            )

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(k + "\n" for k in keep))
        os.replace(tmp, self.path)  # a kill now leaves the old records or the trimmed ones

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **values, "time": time.time()}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"train/{k}", v, step)
        if self._bar is not None:
            shown = {k: f"{values[k]:.4g}" for k in ("loss", "lr", "samples_per_s") if k in values}
            self._bar.set_postfix(shown, refresh=False)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()

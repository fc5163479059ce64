"""Training metrics: ``RUN/metrics.jsonl`` (one JSON object per logged step), TensorBoard event
files under ``RUN/tb`` and a progress bar. Only rank 0 writes."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from datakit.errors import naming_write

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
        self.tb_dir = run / TB_DIR
        self._tb: Any = None
        self._bar: Any = None
        if not enabled:
            return
        self._truncate_after(start_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            _quiet_tensorboard_thread()
            self._tb = SummaryWriter(str(self.tb_dir), purge_step=start_step + 1)
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
        with naming_write(self.path), self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            with naming_write(self.tb_dir):  # its writer thread's error, raised here
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
            with naming_write(self.tb_dir):
                self._tb.close()
        if self._bar is not None:
            self._bar.close()


def _quiet_tensorboard_thread() -> None:
    """A write that fails in TensorBoard's writer thread (a full disk) is raised again in the main
    thread by the writer's next call, and ends there as one line: the thread's own traceback, which
    ``threading.excepthook`` would print first, is left out."""
    previous = threading.excepthook
    if getattr(previous, "quiets_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(
            args.exc_value, OSError
        ):
            return
        previous(args)

    hook.quiets_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook

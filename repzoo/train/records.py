"""What a training run records each epoch: ``metrics.csv``, ``metrics.json`` and, when
``torch.utils.tensorboard`` imports, TensorBoard scalars in ``<output>/tensorboard/``.

Only the main process records. Every file is written atomically; TensorBoard's event file is appended to,
and a resumed run purges the events of the epochs it runs again.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["Records", "tensorboard_writer"]


def tensorboard_writer(folder: Path, purge_step: Optional[int] = None):
    """A ``SummaryWriter`` into ``folder``, or None (and one line on stderr) when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("repzoo: TensorBoard is not installed, so no TensorBoard log is written "
              "(pip install 'repzoo[train]' or tensorboard to get one).", file=sys.stderr)
        return None
    return SummaryWriter(log_dir=str(folder), purge_step=purge_step)


class Records:
    """The per-epoch metrics of a run in ``output``; ``history`` holds the rows so far (a resume passes them in)."""

    def __init__(self, output: Path, history: List[Dict[str, Any]], start_epoch: int = 0):
        self.output, self.history, self.start_epoch = output, history, start_epoch
        self._writer: Any = None
        self._tried = False

    def add(self, row: Dict[str, Any]) -> None:
        """Append ``row`` (it has ``epoch``) and write the CSV, the JSON and the TensorBoard scalars."""
        from ..weights.files import atomic_path, write_json

        self.history.append(row)
        with atomic_path(self.output / "metrics.csv", "the metrics") as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=list(self.history[-1]))
                writer.writeheader()
                writer.writerows(self.history)
        write_json(self.output / "metrics.json", {"history": self.history}, "the metrics")
        if not self._tried:  # the first epoch this process records: open the log (or say it is not written)
            self._tried = True
            self._writer = tensorboard_writer(self.output / "tensorboard", purge_step=self.start_epoch)
        if self._writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, global_step=row["epoch"])
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

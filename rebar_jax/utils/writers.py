"""Metrics to JSON lines, CSV and TensorBoard event files."""
import csv
import json
import os
from typing import Any

from tensorboardX import SummaryWriter


class MetricWriter:
  """Appends one row of scalars per call to metrics.jsonl and TensorBoard.

  Rows of an earlier (resumed) run in the same directory are kept; rows past
  the step a resumed run restarts from are dropped so that the files describe
  one uninterrupted run. `close` writes metrics.csv with every column.
  """

  def __init__(self, workdir: str, resume_step: int = 0):
    self._path = os.path.join(workdir, "metrics.jsonl")
    self._csv = os.path.join(workdir, "metrics.csv")
    self._rows = []
    if os.path.exists(self._path):
      with open(self._path) as fh:
        self._rows = [r for r in map(json.loads, fh)
                      if r["step"] <= resume_step]
      with open(self._path, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in self._rows)
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, row: dict[str, Any]) -> None:
    self._rows.append(row)
    with open(self._path, "a") as fh:
      fh.write(json.dumps(row) + "\n")
    for key, value in row.items():
      if key != "step":
        self._tb.add_scalar(key, value, row["step"])

  def rows(self) -> list[dict[str, Any]]:
    return list(self._rows)

  def close(self) -> None:
    self._tb.close()
    columns = sorted({k for r in self._rows for k in r},
                     key=lambda k: (k != "step", k))
    with open(self._csv, "w", newline="") as fh:
      writer = csv.DictWriter(fh, fieldnames=columns)
      writer.writeheader()
      writer.writerows(self._rows)

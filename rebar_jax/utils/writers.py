"""Metrics to JSON lines, CSV and TensorBoard event files."""
import csv
import json
import os
from typing import Any, Callable

from tensorboardX import SummaryWriter


class MetricWriter:
  """Appends one row of scalars per call to metrics.jsonl and TensorBoard.

  On a resumed run the history is made to match the checkpoint the run
  restarts from: rows past `resume_step` are dropped (the resumed run writes
  them again), TensorBoard is told to purge its events past that step, and a
  line that cannot be parsed (the torn last line of a killed run) is dropped
  with a warning naming the file and line. `flush` pushes everything to disk;
  the trainer calls it at every checkpoint, so a killed run loses at most what
  came after its last checkpoint. `close` also writes metrics.csv.

  Args:
    workdir: the run's directory.
    resume_step: the step of the restored checkpoint (0 for a new run).
    warn: where warnings go (default: print).
  """

  def __init__(self, workdir: str, resume_step: int = 0,
               warn: Callable[[str], None] = print):
    self._path = os.path.join(workdir, "metrics.jsonl")
    self._csv = os.path.join(workdir, "metrics.csv")
    self._rows = []
    if os.path.exists(self._path):
      self._rows = self._read(warn)
      kept = [r for r in self._rows if r["step"] <= resume_step]
      self._rows = kept
      tmp = self._path + ".tmp"
      with open(tmp, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in kept)
      os.replace(tmp, self._path)
    last = self._rows[-1]["step"] if self._rows else 0
    if resume_step and last < resume_step:
      warn(f"Warning: {self._path} holds rows up to step {last} only, but "
           f"the run resumes from step {resume_step}: the curves will have a "
           "gap (the final metrics come from the checkpoint, not from this "
           "file).")
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                             purge_step=resume_step + 1 if resume_step
                             else None)

  def _read(self, warn: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    with open(self._path) as fh:
      lines = fh.readlines()
    for number, line in enumerate(lines, 1):
      try:
        row = json.loads(line)
        if not isinstance(row, dict) or "step" not in row:
          raise ValueError("not a metrics row")
        rows.append(row)
      except ValueError:
        where = ("its last line" if number == len(lines)
                 else f"line {number}")
        warn(f"Warning: dropped {where} of {self._path}, which is not a "
             f"complete row ({line.strip()[:60]!r}; a run killed while "
             "writing it)")
    return rows

  def write(self, row: dict[str, Any]) -> None:
    self._rows.append(row)
    try:
      with open(self._path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    except OSError as e:  # a full disk's write error names no file
      raise OSError(e.errno, e.strerror, self._path) from e
    for key, value in row.items():
      if key != "step":
        self._tb.add_scalar(key, value, row["step"])

  def rows(self) -> list[dict[str, Any]]:
    return list(self._rows)

  def flush(self) -> None:
    self._tb.flush()

  def close(self) -> None:
    self._tb.close()
    columns = sorted({k for r in self._rows for k in r},
                     key=lambda k: (k != "step", k))
    with open(self._csv, "w", newline="") as fh:
      writer = csv.DictWriter(fh, fieldnames=columns)
      writer.writeheader()
      writer.writerows(self._rows)

r"""Tables and training curves from run directories, without re-running anything.

  python scripts/report.py --runs='runs/*' --keys=estimator \
      --metrics=train_elbo_last_1000_steps,test_elbo,test_iw100 \
      --output=results/report

Each run directory is what `python -m rebar_jax.train` writes: config.json,
final_metrics.json and metrics.jsonl. Runs are grouped by the config fields in
--keys (e.g. dataset,estimator,iw_samples); every metric is aggregated over the
runs of a group (seeds, say) by its mean, with the number of runs. A metric is
either a key of final_metrics.json (`test_iw100`) or a column of metrics.jsonl
with an aggregation over the run's rows: `valid_elbo:max`, `grad_snr:last`,
`steps_per_sec:median`, `train_elbo:mean`. Unfinished runs (no
final_metrics.json) are listed but have no final metrics.

Writes <output>.md (a Markdown table, with the command that made it and where
each run came from), <output>.csv and <output>.png (the --curve column of
metrics.jsonl against the step, one line per run, coloured by group; one
panel per column when --curve lists several).
"""
import csv
import glob
import json
import os
import statistics
import sys
from typing import Any, Optional, Union

from absl import app
from absl import flags
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

_RUNS = flags.DEFINE_list("runs", None, "Run directories or glob patterns.")
_KEYS = flags.DEFINE_list("keys", ["estimator"], "Config fields to group by.")
_METRICS = flags.DEFINE_list(
    "metrics", ["train_elbo_last_1000_steps", "test_elbo"],
    "final_metrics.json keys, or metrics.jsonl columns with :last, :max, "
    ":min, :mean or :median.")
_CURVE = flags.DEFINE_list(
    "curve", ["train_elbo"], "metrics.jsonl columns plotted against the step, "
    "one panel each (e.g. valid_iw100,valid_kl,grad_snr,ess,active_units).")
_OUTPUT = flags.DEFINE_string("output", "results/report",
                              "Output path without extension.")

AGGREGATIONS = {"last": lambda v: v[-1], "max": max, "min": min,
                "mean": statistics.fmean, "median": statistics.median}


def _read_json(path: str) -> Optional[dict[str, Any]]:
  if not os.path.exists(path):
    return None
  with open(path) as fh:
    return json.load(fh)


def _read_rows(path: str) -> list[dict[str, Any]]:
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as fh:
    for line in fh:
      try:
        rows.append(json.loads(line))
      except ValueError:
        continue  # a torn last line of a killed run
  return rows


def load_run(workdir: str) -> dict[str, Any]:
  """{"workdir", "config", "final" (or None), "rows"} of one run directory."""
  config = _read_json(os.path.join(workdir, "config.json"))
  if config is None:
    raise FileNotFoundError(f"{workdir} has no config.json: not a run "
                            "directory of rebar_jax.train.")
  return {"workdir": workdir, "config": config,
          "final": _read_json(os.path.join(workdir, "final_metrics.json")),
          "rows": _read_rows(os.path.join(workdir, "metrics.jsonl"))}


def metric_value(run: dict[str, Any], metric: str) -> Optional[float]:
  """One run's value of `metric` (see the module docstring), or None."""
  if ":" in metric:
    column, how = metric.split(":", 1)
    if how not in AGGREGATIONS:
      raise ValueError(f"Unknown aggregation {how!r} in {metric!r}; choose "
                       f"one of {sorted(AGGREGATIONS)}.")
    values = [r[column] for r in run["rows"] if column in r]
    return float(AGGREGATIONS[how](values)) if values else None
  value = (run["final"] or {}).get(metric)
  return None if value is None else float(value)


def group_table(runs: list[dict[str, Any]], keys: list[str],
                metrics: list[str]) -> list[dict[str, Any]]:
  """One row per combination of key values: the keys, runs, metric means."""
  groups: dict[tuple, list[dict[str, Any]]] = {}
  for run in runs:
    group = tuple(json.dumps(run["config"].get(k)) for k in keys)
    groups.setdefault(group, []).append(run)
  table = []
  for group in sorted(groups):
    members = groups[group]
    row = {k: json.loads(v) for k, v in zip(keys, group)}
    row["runs"] = len(members)
    for metric in metrics:
      values = [v for v in (metric_value(r, metric) for r in members)
                if v is not None]
      row[metric] = statistics.fmean(values) if values else None
    table.append(row)
  return table


def markdown(table: list[dict[str, Any]], columns: list[str]) -> str:
  fmt = lambda v: ("-" if v is None else f"{v:.2f}" if isinstance(v, float)
                   else str(v))
  lines = ["| " + " | ".join(columns) + " |",
           "| " + " | ".join("---" for _ in columns) + " |"]
  lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |"
            for row in table]
  return "\n".join(lines)


def plot_curves(runs: list[dict[str, Any]], keys: list[str],
                columns: Union[str, list[str]], path: str) -> None:
  """One panel per metrics.jsonl column against the step, a line per run."""
  columns = [columns] if isinstance(columns, str) else list(columns)
  n = len(columns)
  fig, axes = plt.subplots(1, n, squeeze=False,
                           figsize=(8, 5) if n == 1 else (4.2 * n, 3.8))
  labels = sorted({", ".join(str(r["config"].get(k)) for k in keys)
                   for r in runs})
  colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
  handles = {}
  for ax, column in zip(axes[0], columns):
    for run in runs:
      points = [(r["step"], r[column]) for r in run["rows"] if column in r]
      if not points:
        continue
      label = ", ".join(str(run["config"].get(k)) for k in keys)
      steps, values = zip(*points)
      (line,) = ax.plot(steps, values, color=colours[label], lw=1)
      handles.setdefault(label, line)
    ax.set(xlabel="step", ylabel=column,
           title=column if n > 1 else f"{column} by {', '.join(keys)}")
    ax.grid(alpha=0.3)
  if handles:
    names = sorted(handles)
    if n == 1:
      axes[0, 0].legend([handles[n] for n in names], names, fontsize=8)
    else:
      fig.legend([handles[n] for n in names], names, fontsize=8,
                 loc="lower center", ncol=min(len(names), 4),
                 title=", ".join(keys))
  fig.tight_layout(rect=None if n == 1 else (0, 0.22, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  if not _RUNS.value:
    raise app.UsageError("--runs is required (run directories or globs).")
  workdirs = sorted({d for pattern in _RUNS.value
                     for d in (glob.glob(pattern) or [pattern])
                     if os.path.isdir(d)})
  if not workdirs:
    raise app.UsageError(f"No run directory matches {_RUNS.value}.")
  runs = [load_run(d) for d in workdirs]
  table = group_table(runs, _KEYS.value, _METRICS.value)
  columns = list(_KEYS.value) + ["runs"] + list(_METRICS.value)
  os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
  unfinished = [r["workdir"] for r in runs if r["final"] is None]
  with open(_OUTPUT.value + ".md", "w") as fh:
    fh.write(f"<!-- written by: python {' '.join(sys.argv)} -->\n\n")
    fh.write(markdown(table, columns) + "\n\n")
    fh.write("Runs: " + ", ".join(f"`{d}`" for d in workdirs) + "\n")
    if unfinished:
      fh.write("Unfinished (no final metrics): "
               + ", ".join(f"`{d}`" for d in unfinished) + "\n")
  with open(_OUTPUT.value + ".csv", "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=columns)
    writer.writeheader()
    writer.writerows(table)
  plot_curves(runs, _KEYS.value, _CURVE.value, _OUTPUT.value + ".png")
  print(markdown(table, columns))
  print(f"Wrote {_OUTPUT.value}.md, .csv and .png")


if __name__ == "__main__":
  app.run(main)

r"""Tables and training curves from run directories, without re-running anything.

  python scripts/report.py --runs='runs/*' --keys=estimator \
      --metrics=train_elbo_last_1000_steps,test_elbo,test_iw100 \
      --output=results/report

  # which estimator is ahead, and is the gap more than the seeds' noise?
  python scripts/report.py --runs='runs/*' --keys=estimator \
      --metrics=test_iw100 --rank=test_iw100 --output=results/report

Each run directory is what `python -m rebar_jax.train` writes: config.json,
final_metrics.json and metrics.jsonl. Runs are grouped by the config fields in
--keys (e.g. dataset,estimator,iw_samples); every metric is aggregated over the
runs of a group (seeds, say) by its mean, with the number of runs and the
half-width of the 95% Student-t interval of that mean ("no interval (1 run)"
for a group of one). A metric is
either a key of final_metrics.json (`test_iw100`) or a column of metrics.jsonl
with an aggregation over the run's rows: `valid_elbo:max`, `grad_snr:last`,
`steps_per_sec:median`, `train_elbo:mean`, or `train_elbo:best1000`, the
highest mean over 1000 consecutive steps (the RELAX paper's "highest training
ELBO"; `best_window_mean`). Unfinished runs (no
final_metrics.json) are listed but have no final metrics.

Rankings (--rank=METRIC, higher is better; --rank_lower=METRIC, lower is
better, e.g. a log variance): for every pair of groups (or only pairs equal in
the --pair_within keys), the difference A - B over the seeds both have,
paired by config `seed` (a group's runs with the same seed averaged first),
its mean and 95% t interval. The verdict is "A ahead" or "B ahead" only when
the interval excludes 0, "tie" when it contains 0, and "one seed; no
interval" with fewer than two paired seeds: one seed orders nothing.

Writes <output>.md (a Markdown table, with the command that made it and where
each run came from, then the pairwise table), <output>.csv and <output>.png (the --curve column of
metrics.jsonl against the step, one line per run, coloured by group; one
panel per column when --curve lists several).
"""
import csv
import glob
import json
import os
import itertools
import math
import statistics
import sys
from typing import Any, Optional, Sequence, Union

from absl import app
from absl import flags
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from scipy import stats  # pylint: disable=g-import-not-at-top

_RUNS = flags.DEFINE_list(
    "runs", None, "Run directories or glob patterns, comma-separated (a "
    "directory whose name has commas, as a sweep trial's, can be named as it "
    "is).")
_KEYS = flags.DEFINE_list("keys", ["estimator"], "Config fields to group by.")
_METRICS = flags.DEFINE_list(
    "metrics", ["train_elbo_last_1000_steps", "test_elbo"],
    "final_metrics.json keys, or metrics.jsonl columns with :last, :max, "
    ":min, :mean, :median or :bestN (highest mean over N steps).")
_CURVE = flags.DEFINE_list(
    "curve", ["train_elbo"], "metrics.jsonl columns plotted against the step, "
    "one panel each (e.g. valid_iw100,valid_kl,grad_snr,ess,active_units).")
_OUTPUT = flags.DEFINE_string("output", "results/report",
                              "Output path without extension.")
_RANK = flags.DEFINE_list(
    "rank", [], "Metrics (higher is better) whose pairwise differences "
    "across seeds are tabulated with 95% intervals and ties.")
_RANK_LOWER = flags.DEFINE_list(
    "rank_lower", [], "As --rank, for metrics where lower is better.")
_PAIR_WITHIN = flags.DEFINE_list(
    "pair_within", [], "Keys (of --keys) a pair of groups must share to be "
    "compared, e.g. iw_samples: compare estimators at equal K only.")

CONFIDENCE = 0.95
NO_INTERVAL = "no interval (1 run)"
ONE_SEED = "one seed; no interval"
TIE = "tie"

AGGREGATIONS = {"last": lambda v: v[-1], "max": max, "min": min,
                "mean": statistics.fmean, "median": statistics.median}


def _read_json(path: str) -> Optional[dict[str, Any]]:
  if not os.path.exists(path):
    return None
  with open(path) as fh:
    return json.load(fh)


def read_rows(path: str) -> list[dict[str, Any]]:
  """The rows of a metrics.jsonl ([] if absent), a torn last line skipped."""
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
          "rows": read_rows(os.path.join(workdir, "metrics.jsonl"))}


def best_window_mean(steps: Sequence[int], values: Sequence[float],
                     window_steps: int) -> float:
  """Highest mean of `values` over `window_steps` consecutive steps.

  values[i] is logged at steps[i], every s steps (s the smallest gap, the
  run's logging interval); a window is round(window_steps / s) consecutive
  rows (at least 1, at most all of them).
  """
  gap = max(1, int(np.min(np.diff(np.asarray(steps), prepend=0))))
  window = min(max(1, int(round(window_steps / gap))), len(values))
  means = np.convolve(np.asarray(values, np.float64),
                      np.ones(window) / window, mode="valid")
  return float(np.max(means))


def metric_value(run: dict[str, Any], metric: str) -> Optional[float]:
  """One run's value of `metric` (see the module docstring), or None."""
  if ":" in metric:
    column, how = metric.split(":", 1)
    rows = [r for r in run["rows"] if column in r]
    if how.startswith("best") and how[4:].isdigit() and int(how[4:]) > 0:
      return (best_window_mean([r["step"] for r in rows],
                               [r[column] for r in rows], int(how[4:]))
              if rows else None)
    if how not in AGGREGATIONS:
      raise ValueError(f"Unknown aggregation {how!r} in {metric!r}; choose "
                       f"one of {sorted(AGGREGATIONS)} or bestN (the highest "
                       "mean over N consecutive steps).")
    values = [r[column] for r in rows]
    return float(AGGREGATIONS[how](values)) if values else None
  value = (run["final"] or {}).get(metric)
  return None if value is None else float(value)


def interval(values: Sequence[float], confidence: float = CONFIDENCE
             ) -> tuple[float, Optional[float]]:
  """(mean, half-width of its two-sided Student-t interval); the half-width
  is None for fewer than two values (no spread to estimate)."""
  mean = statistics.fmean(values)
  if len(values) < 2:
    return mean, None
  sem = statistics.stdev(values) / math.sqrt(len(values))
  return mean, float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * sem)


def group_table(runs: list[dict[str, Any]], keys: list[str],
                metrics: list[str]) -> list[dict[str, Any]]:
  """One row per combination of key values: the keys, runs, metric means.

  Each metric also gets `<metric> ±95%`: the half-width of the 95% t interval
  of the mean over the group's runs, or NO_INTERVAL for a single run.
  """
  table = []
  for group, members in _groups(runs, keys).items():
    row = {k: json.loads(v) for k, v in zip(keys, group)}
    row["runs"] = len(members)
    for metric in metrics:
      values = [v for v in (metric_value(r, metric) for r in members)
                if v is not None]
      mean, half = interval(values) if values else (None, None)
      row[metric] = mean
      row[f"{metric} ±95%"] = (half if half is not None
                               else NO_INTERVAL if values else None)
    table.append(row)
  return table


def _groups(runs: list[dict[str, Any]], keys: list[str]
            ) -> dict[tuple, list[dict[str, Any]]]:
  """Runs by their JSON-encoded key values, in sorted order of the groups."""
  groups: dict[tuple, list[dict[str, Any]]] = {}
  for run in runs:
    group = tuple(json.dumps(run["config"].get(k)) for k in keys)
    groups.setdefault(group, []).append(run)
  return dict(sorted(groups.items()))


def _by_seed(members: list[dict[str, Any]], metric: str) -> dict[Any, float]:
  """seed -> the metric (the mean of a group's runs sharing that seed)."""
  values: dict[Any, list[float]] = {}
  for run in members:
    value = metric_value(run, metric)
    if value is not None:
      values.setdefault(json.dumps(run["config"].get("seed")), []).append(value)
  return {seed: statistics.fmean(v) for seed, v in values.items()}


def pairwise(runs: list[dict[str, Any]], keys: list[str], metric: str,
             higher_is_better: bool = True,
             pair_within: Sequence[str] = ()) -> list[dict[str, Any]]:
  """Paired differences across seeds for every pair of groups.

  For groups A and B (A first in sorted order) and the seeds both ran, the
  per-seed differences d = A - B give a mean and a 95% t interval. The
  verdict: TIE when the interval contains 0, "<A> ahead" / "<B> ahead" when
  it excludes 0 (ahead: higher, or lower with higher_is_better=False), and
  ONE_SEED with fewer than two paired seeds.

  Returns rows {"a", "b", "metric", "seeds", "difference", "low", "high",
  "verdict"}; a and b are the groups' key values joined by ", ".
  """
  groups = _groups(runs, keys)
  label = lambda g: ", ".join(str(json.loads(v)) for v in g)
  within = [keys.index(k) for k in pair_within]
  rows = []
  for ga, gb in itertools.combinations(groups, 2):
    if any(ga[i] != gb[i] for i in within):
      continue
    a, b = _by_seed(groups[ga], metric), _by_seed(groups[gb], metric)
    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    row = {"a": label(ga), "b": label(gb), "metric": metric,
           "seeds": len(diffs), "difference": None, "low": None,
           "high": None, "verdict": ONE_SEED}
    if diffs:
      mean, half = interval(diffs)
      row["difference"] = mean
      if half is not None:
        row.update(low=mean - half, high=mean + half)
        if row["low"] <= 0 <= row["high"]:
          row["verdict"] = TIE
        else:
          a_better = (mean > 0) == higher_is_better
          row["verdict"] = f"{row['a'] if a_better else row['b']} ahead"
    rows.append(row)
  return rows


def pairwise_markdown(rows: list[dict[str, Any]]) -> str:
  """The pairwise table: A, B, seeds, mean A - B, its 95% interval, verdict."""
  fmt = lambda v: "-" if v is None else f"{v:+.2f}"
  lines = ["| metric | A | B | paired seeds | mean A - B | 95% interval | "
           "verdict |", "| --- | --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    ci = ("-" if r["low"] is None else
          f"[{r['low']:+.2f}, {r['high']:+.2f}]")
    lines.append(f"| {r['metric']} | {r['a']} | {r['b']} | {r['seeds']} | "
                 f"{fmt(r['difference'])} | {ci} | {r['verdict']} |")
  return "\n".join(lines)


def _number(v: float) -> str:
  """Two decimals, or three significant digits below 0.1 (a learning rate
  of 0.001 or a gradient SNR of 0.045 must not print as 0.00)."""
  return f"{v:.2f}" if v == 0 or abs(v) >= 0.1 else f"{v:.3g}"


def markdown(table: list[dict[str, Any]], columns: list[str]) -> str:
  fmt = lambda v: ("-" if v is None else _number(v) if isinstance(v, float)
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


def patterns(pieces: Sequence[str]) -> list[str]:
  """The --runs paths or globs from the flag's comma-split pieces.

  A sweep's trial directory has commas in its name
  (`estimator=rebar,learning_rate=0.001,seed=0`): consecutive pieces are
  joined back with commas, as many as make a path or glob that matches.
  """
  out, i = [], 0
  while i < len(pieces):
    j = next((j for j in range(len(pieces), i + 1, -1)
              if glob.glob(",".join(pieces[i:j]))), i + 1)
    out.append(",".join(pieces[i:j]))
    i = j
  return out


def main(argv):
  del argv
  if not _RUNS.value:
    raise app.UsageError("--runs is required (run directories or globs).")
  workdirs = sorted({d for pattern in patterns(_RUNS.value)
                     for d in (glob.glob(pattern) or [pattern])
                     if os.path.isdir(d)})
  if not workdirs:
    raise app.UsageError(f"No run directory matches {_RUNS.value}.")
  runs = [load_run(d) for d in workdirs]
  table = group_table(runs, _KEYS.value, _METRICS.value)
  columns = list(_KEYS.value) + ["runs"] + [
      c for m in _METRICS.value for c in (m, f"{m} ±95%")]
  ranked = ([(m, True) for m in _RANK.value]
            + [(m, False) for m in _RANK_LOWER.value])
  pairs = [r for metric, higher in ranked for r in pairwise(
      runs, _KEYS.value, metric, higher, _PAIR_WITHIN.value)]
  os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
  unfinished = [r["workdir"] for r in runs if r["final"] is None]
  with open(_OUTPUT.value + ".md", "w") as fh:
    fh.write(f"<!-- written by: python {' '.join(sys.argv)} -->\n\n")
    fh.write(markdown(table, columns) + "\n\n")
    fh.write("±95%: half-width of the 95% Student-t interval of the mean over "
             "the group's runs.\n\n")
    if pairs:
      fh.write("Paired differences across seeds (A - B over the seeds both "
               "ran); \"tie\" where the 95% interval contains 0, \"one seed; "
               "no interval\" where fewer than two seeds pair up:\n\n"
               + pairwise_markdown(pairs) + "\n\n")
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
  if pairs:
    print(pairwise_markdown(pairs))
  print(f"Wrote {_OUTPUT.value}.md, .csv and .png")


if __name__ == "__main__":
  app.run(main)

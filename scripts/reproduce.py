r"""The REBAR/RELAX table protocol as sweeps: SBNs on binarized MNIST and Omniglot.

  # the full protocol (days on one CPU; a cluster: add --address=HEAD:6379)
  python scripts/reproduce.py --output_dir=results/reproduce \
      --data_dir=$REBAR_JAX_DATA_DIR --num_steps=2000000 \
      --learning_rates=5e-3,1e-3,5e-4,1e-4,5e-5 --seeds=0,1,2

  # one row, the learning-rate grid, a short budget
  python scripts/reproduce.py --rows=mnist_linear1 --num_steps=10000 \
      --learning_rates=5e-3,1e-3,5e-4,1e-4,5e-5 --seeds=0 \
      --data_dir=$REBAR_JAX_DATA_DIR

Each row is a sweep (`rebar_jax.sweep`, on Ray Tune) over estimator x learning
rate x seed in `<output_dir>/<row>/`, each trial a training run in its own
workdir (`<output_dir>/<row>/trials/estimator=...,learning_rate=...,seed=...`),
so an interrupted protocol resumes where it stopped (the same command) and
finished trials are not repeated; `--address` runs the trials on a Ray cluster.
Per row and estimator it keeps the learning rate with the best validation
ELBO (mean over seeds) and reports, as means over seeds, training beside
training and validation beside validation: our best training ELBO (highest
1000-step mean) beside the published highest training ELBO (RELAX paper,
Table 2: Concrete, NVIL, MuProp, REBAR, RELAX), our best validation ELBO
(highest over the evaluations) beside the paper's highest validation ELBO
(its appendix table, REBAR and RELAX only), then the final validation ELBO
and test 100-sample bound; `muprop_baseline` is compared with the MuProp
column, which the MuProp paper trained with its learned baseline. Then the
validation ELBO at every evaluation. Omniglot rows are not the paper's data
(see OMNIGLOT_PROTOCOL), and the header says so. Writes reproduce.json,
reproduce.md, reproduce.png (validation ELBO, and each run's encoder-gradient
log-variance diagnostic, against steps) and reproduce_lr.png (validation
ELBO against the learning rate).
"""
import json
import os
import sys
from typing import Optional

from absl import app
from absl import flags
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import sbn_mnist  # pylint: disable=g-import-not-at-top
from rebar_jax import sweep as sweep_lib  # pylint: disable=g-import-not-at-top
import report  # pylint: disable=g-import-not-at-top  (scripts/report.py)

ROWS = {
    # name: (dataset, nonlinear, num_layers)
    "mnist_nonlinear": ("binarized_mnist", True, 1),
    "mnist_linear1": ("binarized_mnist", False, 1),
    "mnist_linear2": ("binarized_mnist", False, 2),
    "omniglot_nonlinear": ("omniglot", True, 1),
    "omniglot_linear1": ("omniglot", False, 1),
    "omniglot_linear2": ("omniglot", False, 2),
}
# The published numbers, read from the RELAX authors' own LaTeX of the paper
# (Grathwohl et al. 2018, ICLR camera-ready): github.com/duvenaud/relax,
# paper/generalized_rebar.tex at commit e9464a13f949 (2018-02-23, its last
# change). The arXiv v1 text (88a2cab, 2017-10-31) differs only in the
# Omniglot nonlinear REBAR and RELAX training cells (-62.28, -58.55 there) and
# the MNIST nonlinear RELAX validation cell (127.51 there); the camera-ready
# numbers are used.
#
# Highest TRAINING ELBO, Table 2 (label tab:vae tr, lines 520-529), columns
# Concrete, NVIL, MuProp, REBAR, RELAX; every cell copied from that table.
PUBLISHED = {
    "mnist_nonlinear": (-102.2, -101.5, -101.1, -81.01, -78.13),
    "mnist_linear1": (-111.3, -112.5, -111.7, -111.6, -111.20),
    "mnist_linear2": (-99.62, -99.6, -99.07, -98.22, -98.00),
    "omniglot_nonlinear": (-110.4, -109.58, -108.72, -56.76, -56.12),
    "omniglot_linear1": (-117.23, -117.44, -117.09, -116.63, -116.57),
    "omniglot_linear2": (-109.95, -109.98, -109.55, -108.71, -108.54),
}
# Our estimator -> its column of PUBLISHED.
PUBLISHED_COLUMN = {"concrete": 0, "nvil": 1, "muprop": 2,
                    "muprop_baseline": 2, "rebar": 3, "relax": 4}
# Highest VALIDATION ELBO, the appendix table "Further results on discrete
# variational autoencoders" (label tab:vae val, lines 881-889 of the same
# file), columns REBAR, RELAX; the paper gives no validation numbers for
# Concrete, NVIL or MuProp. The two nonlinear RELAX cells are printed without
# their minus sign there (119.19, 128.20); the paper's next table says the
# nonlinear RELAX models "achieved lower validation scores than REBAR"
# (-111.12, -127.51), so they are negative ELBOs and the sign is restored.
PUBLISHED_VALID = {
    "mnist_nonlinear": (-111.12, -119.19),
    "mnist_linear1": (-114.32, -113.62),
    "mnist_linear2": (-101.20, -100.85),
    "omniglot_nonlinear": (-127.51, -128.20),
    "omniglot_linear1": (-122.44, -122.11),
    "omniglot_linear2": (-115.83, -115.42),
}
PUBLISHED_VALID_COLUMN = {"rebar": 0, "relax": 1}
# The authors' data (duvenaud/relax rebar_baseline/download_data.py and
# datasets.py, the REBAR code): Burda et al.'s chardata.mat, 28x28, binarized
# once with numpy seed 5, 1345 training images held out for validation.
OMNIGLOT_PROTOCOL = (
    "Omniglot rows are not on the paper's data: REBAR and RELAX used Burda et "
    "al.'s 28x28 `chardata.mat` split, binarized once (fixed seed); ours "
    "resizes Lake et al.'s 105x105 images to 28x28 and binarizes them "
    "dynamically, so the published Omniglot numbers are a reference, not a "
    "like-for-like target.")

VARIANCE_NORMALISED = ("nvil", "muprop_baseline")

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results/reproduce", "Output.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", "", "Directory of the local npz files (written by "
    "python -m rebar_jax.data.prepare); empty: $REBAR_JAX_DATA_DIR.")
_ROWS = flags.DEFINE_list("rows", list(ROWS), f"Rows among {list(ROWS)}.")
_ESTIMATORS = flags.DEFINE_list(
    "estimators", ["nvil", "muprop_baseline", "rebar", "relax", "disarm"],
    "Estimators.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 30000, "Steps per run.")
_LEARNING_RATES = flags.DEFINE_list("learning_rates", ["3e-4"], "Grid.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 0,
                                   "0: num_steps / 3, rounded to 100s.")
_ADDRESS = flags.DEFINE_string("address", None, "A Ray cluster to join; "
                               "default: a local Ray instance.")
_NUM_CPUS = flags.DEFINE_integer("num_cpus", None, "Cores of the local Ray "
                                 "instance (default: all).")


def row_sweep(row: str) -> sweep_lib.Sweep:
  """The row's sweep: its base config, estimator x learning rate x seed."""
  dataset, nonlinear, layers = ROWS[row]
  c = sbn_mnist.get_config()
  c.dataset, c.data_source, c.data_dir = dataset, "local", _DATA_DIR.value
  c.nonlinear, c.num_layers = nonlinear, layers
  c.num_steps = _NUM_STEPS.value
  every = _EVAL_EVERY.value or max(100, (_NUM_STEPS.value // 3) // 100 * 100)
  c.eval_every = c.checkpoint_every = every
  c.progress_bar = False
  grid = {"estimator": list(_ESTIMATORS.value),
          "learning_rate": [float(lr) for lr in _LEARNING_RATES.value],
          "seed": [int(seed) for seed in _SEEDS.value]}
  return sweep_lib.Sweep(os.path.join(_OUTPUT_DIR.value, row), c, grid)


def published(row: str, estimator: str, split: str = "train"
              ) -> Optional[float]:
  """The paper's highest `split` ("train" or "valid") ELBO, or None."""
  table, column = ((PUBLISHED, PUBLISHED_COLUMN) if split == "train" else
                   (PUBLISHED_VALID, PUBLISHED_VALID_COLUMN))
  if row not in table or estimator not in column:
    return None
  return table[row][column[estimator]]


def _cell(value: Optional[float], fmt: str = "g") -> str:
  return "" if value is None else format(value, fmt)


def _rows(workdir: str) -> list[dict]:
  return report.read_rows(os.path.join(workdir, "metrics.jsonl"))


def best_train_elbo(workdir: str) -> float:
  """Highest mean training ELBO over 1000-step windows of the run."""
  rows = _rows(workdir)
  return report.best_window_mean([r["step"] for r in rows],
                                 [r["train_elbo"] for r in rows], 1000)


def eval_curve(workdir: str) -> list[dict]:
  """The evaluation rows of a run: step, valid ELBO, test IW-100, ..."""
  return [r for r in _rows(workdir) if "valid_elbo" in r]


def best_valid_elbo(workdir: str) -> Optional[float]:
  """Highest validation ELBO over the run's evaluations (as the paper's
  appendix reports it), or None without evaluations."""
  values = [r["valid_elbo"] for r in eval_curve(workdir)]
  return float(max(values)) if values else None


def header(num_steps: int, learning_rates: list[str], seeds: list[str],
           rows: list[str]) -> list[str]:
  """The table's opening sentences: what is compared with what."""
  md = [f"SBN table protocol, {num_steps} steps per run, learning rates "
        f"{learning_rates} (best by validation ELBO), seeds {seeds}. Training "
        "beside training: our highest 1000-step mean training ELBO beside the "
        "paper's highest training ELBO (RELAX paper, Table 2). Validation "
        "beside validation: our highest validation ELBO over the evaluations "
        "beside the paper's highest validation ELBO (its appendix; REBAR and "
        "RELAX only, blank where the paper gives none). Gaps are ours minus "
        "the paper's, in nats; means over seeds."]
  if any(ROWS[r][0] == "omniglot" for r in rows):
    md += ["", OMNIGLOT_PROTOCOL]
  return md


def table_row(row: str, est: str, lr: float, best: list[dict]) -> str:
  """One line of the main table from the chosen learning rate's runs."""
  train = float(np.mean([r["best_train_elbo"] for r in best]))
  valids = [r.get("best_valid_elbo") for r in best]
  valid = (None if any(v is None for v in valids)
           else float(np.mean(valids)))
  pub_train, pub_valid = published(row, est), published(row, est, "valid")
  gap = lambda ours, theirs: (None if ours is None or theirs is None
                              else ours - theirs)
  return (f"| {row} | {est} | {lr:g} | {train:.2f} | {_cell(pub_train)} | "
          f"{_cell(gap(train, pub_train), '+.2f')} | {_cell(valid, '.2f')} | "
          f"{_cell(pub_valid)} | {_cell(gap(valid, pub_valid), '+.2f')} | "
          f"{np.mean([r['valid_elbo'] for r in best]):.2f} | "
          f"{np.mean([r['test_iw100'] for r in best]):.2f} |")


TABLE_HEADER = [
    "| row | estimator | lr | best train ELBO | published best train ELBO | "
    "gap | best valid ELBO | published best valid ELBO | gap | final valid "
    "ELBO | test IW-100 |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]


def lr_grid_markdown(results: list[dict]) -> list[str]:
  """Validation ELBO (mean over seeds) at every learning rate of the grid."""
  lrs = sorted({r["learning_rate"] for r in results}, reverse=True)
  md = ["", "Validation ELBO at each learning rate (mean over seeds; bold: "
        "the one chosen).", "",
        "| row | estimator | " + " | ".join(f"lr {lr:g}" for lr in lrs) +
        " |", "| --- | --- |" + " --- |" * len(lrs)]
  settings = dict.fromkeys((r["row"], r["estimator"]) for r in results)
  for row, est in settings:
    means = {}
    for lr in lrs:
      values = [r["valid_elbo"] for r in results if (
          r["row"], r["estimator"], r["learning_rate"]) == (row, est, lr)]
      if values:
        means[lr] = float(np.mean(values))
    best = max(means, key=means.get)
    md.append(f"| {row} | {est} | " + " | ".join(
        "" if lr not in means else
        (f"**{means[lr]:.2f}**" if lr == best else f"{means[lr]:.2f}")
        for lr in lrs) + " |")
  return md


def lr_grid_plot(results: list[dict], path: str) -> None:
  """Validation ELBO (mean over seeds) against the learning rate, per row."""
  rows = sorted({r["row"] for r in results})
  fig, axes = plt.subplots(1, len(rows), figsize=(6 * len(rows), 4.2),
                           squeeze=False)
  for ax, row in zip(axes[0], rows):
    names = dict.fromkeys(r["estimator"] for r in results if r["row"] == row)
    for i, est in enumerate(names):
      lrs = sorted({r["learning_rate"] for r in results
                    if (r["row"], r["estimator"]) == (row, est)})
      means = [np.mean([r["valid_elbo"] for r in results if (
          r["row"], r["estimator"], r["learning_rate"]) == (row, est, lr)])
               for lr in lrs]
      ax.plot(lrs, means, "o-", color=f"C{i % 10}", label=est)
    ax.set(xscale="log", xlabel="learning rate", ylabel="validation ELBO",
           title=f"{row}: validation ELBO at each learning rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def curves_markdown_and_plot(best_runs: dict, path: str) -> list[str]:
  """Validation ELBO against steps per (row, estimator); plot beside it.

  best_runs: (row, estimator) -> workdir of the best learning rate, seed 0.
  """
  curves = {k: eval_curve(w) for k, w in best_runs.items()}
  steps = sorted({r["step"] for c in curves.values() for r in c})
  md = ["", "Validation ELBO against training steps (best learning rate, first "
        "seed), beside the paper's highest validation ELBO (its appendix; "
        "REBAR and RELAX only).",
        "", "| row | estimator | " + " | ".join(f"{s // 1000}k" for s in steps)
        + " | published best valid ELBO |",
        "| --- | --- | " + " | ".join("---" for _ in steps) + " | --- |"]
  for (row, est), c in curves.items():
    by_step = {r["step"]: r["valid_elbo"] for r in c}
    md.append(f"| {row} | {est} | " + " | ".join(
        f"{by_step[s]:.2f}" if s in by_step else "" for s in steps) +
              f" | {_cell(published(row, est, 'valid'))} |")
  rows = sorted({row for row, _ in curves})
  names = sorted({est for _, est in curves})
  color = {est: f"C{i % 10}" for i, est in enumerate(names)}
  fig, axes = plt.subplots(len(rows), 2, figsize=(12, 4 * len(rows)),
                           squeeze=False)
  for (ax_elbo, ax_var), row in zip(axes, rows):
    for (r, est), c in curves.items():
      if r != row or not c:
        continue
      ax_elbo.plot([q["step"] for q in c], [q["valid_elbo"] for q in c],
                   "o-", color=color[est], label=est)
      if published(row, est, "valid") is not None:
        ax_elbo.axhline(published(row, est, "valid"), color=color[est],
                        ls=":", lw=1)
      # NVIL's and MuProp-with-baseline's logged gradients are divided by
      # the running sd of their signal (a step size): their variance is
      # compared in scripts/variance.py instead.
      if "grad_log_variance" in c[0] and est not in VARIANCE_NORMALISED:
        ax_var.plot([q["step"] for q in c],
                    [q["grad_log_variance"] for q in c], "o-",
                    color=color[est], label=est)
    ax_elbo.set(xlabel="step", ylabel="validation ELBO",
                title=f"{row} (dotted: published best valid ELBO)")
    ax_var.set(xlabel="step", ylabel="log variance of the encoder gradient",
               title=f"{row}: each estimator along its own run (not "
               f"{', '.join(sorted(VARIANCE_NORMALISED))})")
    for ax in (ax_elbo, ax_var):
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return md


def main(argv):
  del argv
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
  for row in _ROWS.value:
    if row not in ROWS:
      raise app.UsageError(f"Unknown row {row!r}; choose from {list(ROWS)}.")
  results, best_runs = [], {}
  for row in _ROWS.value:
    sweep = row_sweep(row)
    sweep.write_or_check_manifest()
    counts = sweep_lib.run(sweep, address=_ADDRESS.value,
                           num_cpus=_NUM_CPUS.value)
    if counts["unfinished"] or counts["failed"]:
      print(sweep_lib.status_table(sweep_lib.status(sweep)))
      sys.exit(f"Row {row}: {counts['unfinished']} trial(s) unfinished, "
               f"{counts['failed']} failed (python scripts/sweep.py "
               f"--sweep_dir={sweep.sweep_dir} --status). Run the same "
               "command to resume.")
    for r in sweep_lib.results(sweep):
      workdir = sweep.workdir({k: r[k] for k in sweep.grid})
      results.append({"row": row, **r,
                      "best_train_elbo": best_train_elbo(workdir),
                      "best_valid_elbo": best_valid_elbo(workdir)})
  with open(os.path.join(_OUTPUT_DIR.value, "reproduce.json"), "w") as fh:
    json.dump(results, fh, indent=2)

  md = header(_NUM_STEPS.value, _LEARNING_RATES.value, _SEEDS.value,
              _ROWS.value) + [""] + TABLE_HEADER
  for row in _ROWS.value:
    sweep = row_sweep(row)
    for est in _ESTIMATORS.value:
      lr, best = sweep_lib.choose_learning_rate(
          [r for r in results if (r["row"], r["estimator"]) == (row, est)],
          len(sweep.grid["seed"]), "valid_elbo")
      best_runs[(row, est)] = sweep.workdir(
          {"estimator": est, "learning_rate": lr, "seed": best[0]["seed"]})
      md.append(table_row(row, est, lr, best))
  md += lr_grid_markdown(results)
  lr_grid_plot(results, os.path.join(_OUTPUT_DIR.value, "reproduce_lr.png"))
  md += curves_markdown_and_plot(
      best_runs, os.path.join(_OUTPUT_DIR.value, "reproduce.png"))
  with open(os.path.join(_OUTPUT_DIR.value, "reproduce.md"), "w") as fh:
    fh.write("\n".join(md) + "\n")
  print("\n".join(md))


if __name__ == "__main__":
  app.run(main)

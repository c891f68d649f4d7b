r"""The REBAR/RELAX table protocol: SBNs on binarized MNIST and Omniglot.

  # the full protocol (days on a CPU): 2,000,000 steps, 5 learning rates, 3 seeds
  python scripts/reproduce.py --output_dir=results/reproduce \
      --data_dir=$REBAR_JAX_DATA_DIR --num_steps=2000000 \
      --learning_rates=5e-3,1e-3,5e-4,1e-4,5e-5 --seeds=0,1,2

  # one row, every estimator, a CPU-hour budget
  python scripts/reproduce.py --rows=mnist_linear1 --num_steps=30000 \
      --learning_rates=3e-4 --seeds=0 --data_dir=$REBAR_JAX_DATA_DIR

For each (row, estimator, learning rate, seed) it trains with
`rebar_jax.train.train_and_evaluate` in its own workdir, so an interrupted
protocol resumes where it stopped and finished runs are not repeated. Per row
and estimator it keeps the learning rate with the best validation ELBO and
reports the mean over seeds of the best training ELBO (highest 1000-step
mean), the validation ELBO and the test 100-sample bound, beside the published
highest training ELBO (RELAX paper, Table 2, with the nonlinear NVIL/MuProp/REBAR
columns as corrected from the paper's earlier draft), then the validation ELBO
at every evaluation (the gap as a function of steps). Writes reproduce.json,
reproduce.md and reproduce.png (validation ELBO, and each run's encoder-gradient
log-variance diagnostic, against steps).
"""
import json
import os
import sys

from absl import app
from absl import flags
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import sbn_mnist  # pylint: disable=g-import-not-at-top
from rebar_jax import train

ROWS = {
    # name: (dataset, nonlinear, num_layers)
    "mnist_nonlinear": ("binarized_mnist", True, 1),
    "mnist_linear1": ("binarized_mnist", False, 1),
    "mnist_linear2": ("binarized_mnist", False, 2),
    "omniglot_nonlinear": ("omniglot", True, 1),
    "omniglot_linear1": ("omniglot", False, 1),
    "omniglot_linear2": ("omniglot", False, 2),
}
PUBLISHED = {  # highest training ELBO: NVIL, MuProp, REBAR, RELAX
    "mnist_nonlinear": (-102.2, -101.5, -101.1, -78.13),
    "mnist_linear1": (-112.5, -111.7, -111.6, -111.20),
    "mnist_linear2": (-99.6, -99.07, -98.22, -98.00),
    "omniglot_nonlinear": (-110.4, -109.58, -108.72, -56.12),
    "omniglot_linear1": (-117.44, -117.09, -116.63, -116.57),
    "omniglot_linear2": (-109.98, -109.55, -108.71, -108.54),
}
PUBLISHED_NAMES = ("nvil", "muprop", "rebar", "relax")

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results/reproduce", "Output.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", "", "Directory of the local npz files (written by "
    "python -m rebar_jax.data.prepare); empty: $REBAR_JAX_DATA_DIR.")
_ROWS = flags.DEFINE_list("rows", list(ROWS), f"Rows among {list(ROWS)}.")
_ESTIMATORS = flags.DEFINE_list(
    "estimators", ["nvil", "muprop", "rebar", "relax", "concrete", "disarm",
                   "reinforce_loo"], "Estimators.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 30000, "Steps per run.")
_LEARNING_RATES = flags.DEFINE_list("learning_rates", ["3e-4"], "Grid.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 0,
                                   "0: num_steps / 3, rounded to 100s.")


def run_config(row: str, estimator: str, lr: float, seed: int):
  dataset, nonlinear, layers = ROWS[row]
  c = sbn_mnist.get_config()
  c.dataset, c.data_source, c.data_dir = dataset, "local", _DATA_DIR.value
  c.nonlinear, c.num_layers = nonlinear, layers
  c.estimator, c.learning_rate, c.seed = estimator, lr, seed
  c.num_steps = _NUM_STEPS.value
  every = _EVAL_EVERY.value or max(100, (_NUM_STEPS.value // 3) // 100 * 100)
  c.eval_every = c.checkpoint_every = every
  c.progress_bar = False
  return c


def best_train_elbo(workdir: str) -> float:
  """Highest mean training ELBO over 1000-step windows of the run."""
  with open(os.path.join(workdir, "metrics.jsonl")) as fh:
    rows = [json.loads(line) for line in fh]
  steps = np.array([r["step"] for r in rows])
  elbo = np.array([r["train_elbo"] for r in rows])
  window = max(1, int(round(1000 / max(1, np.min(np.diff(steps, prepend=0))))))
  window = min(window, len(elbo))
  means = np.convolve(elbo, np.ones(window) / window, mode="valid")
  return float(np.max(means))


def eval_curve(workdir: str) -> list[dict]:
  """The evaluation rows of a run: step, valid ELBO, test IW-100, ..."""
  with open(os.path.join(workdir, "metrics.jsonl")) as fh:
    rows = [json.loads(line) for line in fh]
  return [r for r in rows if "valid_elbo" in r]


def curves_markdown_and_plot(best_runs: dict, path: str) -> list[str]:
  """Validation ELBO against steps per (row, estimator); plot beside it.

  best_runs: (row, estimator) -> workdir of the best learning rate, seed 0.
  """
  curves = {k: eval_curve(w) for k, w in best_runs.items()}
  steps = sorted({r["step"] for c in curves.values() for r in c})
  md = ["", "Validation ELBO against training steps (best learning rate, first "
        "seed); the gap to the published training ELBO is in the last column.",
        "", "| row | estimator | " + " | ".join(f"{s // 1000}k" for s in steps)
        + " | published train ELBO |",
        "| --- | --- | " + " | ".join("---" for _ in steps) + " | --- |"]
  for (row, est), c in curves.items():
    by_step = {r["step"]: r["valid_elbo"] for r in c}
    published = (PUBLISHED[row][PUBLISHED_NAMES.index(est)]
                 if est in PUBLISHED_NAMES else "")
    md.append(f"| {row} | {est} | " + " | ".join(
        f"{by_step[s]:.2f}" if s in by_step else "" for s in steps) +
              f" | {published} |")
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
      if est in PUBLISHED_NAMES:
        ax_elbo.axhline(PUBLISHED[row][PUBLISHED_NAMES.index(est)],
                        color=color[est], ls=":", lw=1)
      # NVIL's logged gradient is divided by the running sd of its signal (a
      # step size): its variance is compared in scripts/variance.py instead.
      if "grad_log_variance" in c[0] and est != "nvil":
        ax_var.plot([q["step"] for q in c],
                    [q["grad_log_variance"] for q in c], "o-",
                    color=color[est], label=est)
    ax_elbo.set(xlabel="step", ylabel="validation ELBO",
                title=f"{row} (dotted: published training ELBO)")
    ax_var.set(xlabel="step", ylabel="log variance of the encoder gradient",
               title=f"{row}: each estimator along its own run (not NVIL)")
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
  results = []
  for row in _ROWS.value:
    for est in _ESTIMATORS.value:
      for lr in map(float, _LEARNING_RATES.value):
        for seed in map(int, _SEEDS.value):
          workdir = os.path.join(_OUTPUT_DIR.value, "runs",
                                 f"{row}-{est}-lr{lr:g}-seed{seed}")
          final = train.train_and_evaluate(run_config(row, est, lr, seed),
                                           workdir)
          results.append({"row": row, "estimator": est, "lr": lr,
                          "seed": seed, "best_train_elbo":
                          best_train_elbo(workdir), **final})
          with open(os.path.join(_OUTPUT_DIR.value, "reproduce.json"),
                    "w") as fh:
            json.dump(results, fh, indent=2)

  best_runs = {}
  md = [f"SBN table protocol, {_NUM_STEPS.value} steps per run, learning "
        f"rates {_LEARNING_RATES.value} (best by validation ELBO), seeds "
        f"{_SEEDS.value}; published: highest training ELBO, RELAX Table 2.",
        "", "| row | estimator | lr | best train ELBO | valid ELBO | test "
        "IW-100 | published train ELBO |", "| --- | --- | --- | --- | --- | "
        "--- | --- |"]
  for row in _ROWS.value:
    for est in _ESTIMATORS.value:
      runs = [r for r in results if r["row"] == row and r["estimator"] == est]
      by_lr = {}
      for r in runs:
        by_lr.setdefault(r["lr"], []).append(r)
      lr, best = max(by_lr.items(), key=lambda kv: np.mean(
          [r["valid_elbo"] for r in kv[1]]))
      best_runs[(row, est)] = os.path.join(
          _OUTPUT_DIR.value, "runs",
          f"{row}-{est}-lr{lr:g}-seed{best[0]['seed']}")
      published = (PUBLISHED[row][PUBLISHED_NAMES.index(est)]
                   if est in PUBLISHED_NAMES else "")
      md.append(
          f"| {row} | {est} | {lr:g} | "
          f"{np.mean([r['best_train_elbo'] for r in best]):.2f} | "
          f"{np.mean([r['valid_elbo'] for r in best]):.2f} | "
          f"{np.mean([r['test_iw100'] for r in best]):.2f} | {published} |")
  md += curves_markdown_and_plot(
      best_runs, os.path.join(_OUTPUT_DIR.value, "reproduce.png"))
  with open(os.path.join(_OUTPUT_DIR.value, "reproduce.md"), "w") as fh:
    fh.write("\n".join(md) + "\n")
  print("\n".join(md))


if __name__ == "__main__":
  app.run(main)

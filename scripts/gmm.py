r"""The Gaussian mixture model experiment of OVIS (Fig. 2), across K.

  python scripts/gmm.py --output_dir=results/gmm

Trains `rebar_jax.models.gmm.GaussianMixture` (C = 20 components, mu_c = 10 c,
sigma = 5, data from the true weights pi_c ~ 5 + c; Le et al. 2019) with each
multi-sample estimator at each K, on fresh data from the true model every step
(batch `--batch_size`, Adam `--learning_rate`, `--num_steps` steps in one
jitted `lax.scan` per evaluation interval). At the end of each run, on
`--num_eval` fixed data points: the prior error ||softmax(theta) - pi*||_2
and the posterior error mean_x ||q(.|x) - p*(.|x)||_2 (OVIS's "prior MSE" and
"posterior MSE"), the effective sample size of K weights, and the encoder
gradient's log-variance and SNR over 64 draws. Writes gmm.json, gmm.md (a table per metric,
estimator x K) and gmm.png (the errors against K, and the posterior error
against steps).

Seeds: run it once per --seed into its own directory, then

  python scripts/gmm.py --aggregate=results/gmm_s0,results/gmm_s1,results/gmm_s2 \
      --output_dir=results/gmm_seeds

reads their gmm.json files and writes gmm_seeds.md and gmm_seeds.json: per
estimator and K the mean error over the seeds with its 95% t interval, and
for every pair of estimators at the same K the paired difference over the
seeds with its interval and verdict ("tie" where it contains 0;
`scripts/report.py`'s statistics).
"""
import json
import os
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use("Agg")
import matplotlib.ticker  # pylint: disable=g-import-not-at-top
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rebar_jax import diagnostics  # pylint: disable=g-import-not-at-top
from rebar_jax import gradients  # pylint: disable=g-import-not-at-top
from rebar_jax.models import gmm  # pylint: disable=g-import-not-at-top

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results/gmm", "Output.")
_ESTIMATORS = flags.DEFINE_list(
    "estimators", ["rws", "vimco_geometric", "ovis_mc", "ovis_gamma0",
                   "ovis_gamma1", "tvo"],
    "Multi-sample objectives (rebar_jax.estimators.multisample).")
_KS = flags.DEFINE_list("ks", ["2", "5", "10", "20", "50"], "Values of K.")
_AUX_SAMPLES = flags.DEFINE_integer("aux_samples", 10,
                                    "S, OVIS-MC's auxiliary chains.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 10000, "Steps per run.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 1000, "Steps between the "
                                   "recorded errors.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 100, "Data points per step.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Adam's.")
_NUM_EVAL = flags.DEFINE_integer("num_eval", 1000, "Evaluation points.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the data, the initial "
                             "parameters and the estimators' draws.")
_AGGREGATE = flags.DEFINE_list(
    "aggregate", [], "Output directories of runs at different --seed: "
    "aggregate their gmm.json (means, intervals, paired differences) into "
    "--output_dir instead of training.")

METRICS = ("posterior_error", "prior_error", "ess", "grad_log_variance")


def train_one(model, name: str, k: int, key) -> dict:
  """One run; the errors at every evaluation and the final diagnostics."""
  spec = gradients.EstimatorSpec(
      name, families=("categorical",), iw_samples=k,
      aux_samples=_AUX_SAMPLES.value if name == "ovis_mc" else 0)
  k_init, k_eval, k_diag, k_train = jax.random.split(key, 4)
  x_eval = model.sample_data(k_eval, _NUM_EVAL.value)
  params = model.init(k_init, x_eval[:1],
                      jnp.zeros((1, model.num_clusters)))
  state = spec.init(None, model)
  opt = optax.adam(_LEARNING_RATE.value)
  opt_state = opt.init(params)

  def step(carry, step_key):
    params, opt_state = carry
    k_data, k_grad = jax.random.split(step_key)
    x = model.sample_data(k_data, _BATCH_SIZE.value)
    grads = gradients.model_gradients(model, spec, params, state, x, k_grad,
                                      None)[0]
    updates, opt_state = opt.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  @jax.jit
  def interval(carry, keys):
    carry, _ = jax.lax.scan(step, carry, keys)
    return carry, model.apply(carry[0], x_eval, method="errors")

  curve = []
  carry = (params, opt_state)
  keys = jax.random.split(k_train, _NUM_STEPS.value)
  for start in range(0, _NUM_STEPS.value, _EVAL_EVERY.value):
    carry, errors = interval(carry, keys[start:start + _EVAL_EVERY.value])
    curve.append({"step": min(start + _EVAL_EVERY.value, _NUM_STEPS.value),
                  **{m: float(v) for m, v in errors.items()}})
  params = carry[0]
  if not all(np.isfinite(v) for row in curve for v in row.values()):
    raise RuntimeError(f"{name} at K = {k} diverged: {curve[-1]}")
  stats = jax.jit(lambda p, kk: diagnostics.gradient_statistics(
      model, spec, p, state, x_eval[:_BATCH_SIZE.value], kk, 64))(
          params, k_diag)
  ess = diagnostics.effective_sample_size(model, params, x_eval, k_diag, k)
  return {"curve": curve, **curve[-1], "ess": float(ess) / k,
          "grad_log_variance": float(stats["grad_log_variance"]),
          "grad_snr": float(stats["grad_snr"])}


def markdown(results: list[dict], ks: list[int], names: list[str]) -> str:
  lines = [f"GMM (C = 20), {_NUM_STEPS.value} steps, batch "
           f"{_BATCH_SIZE.value}, Adam {_LEARNING_RATE.value:g}, seed "
           f"{_SEED.value}; OVIS-MC with S = {_AUX_SAMPLES.value}. Errors are "
           f"L2 distances on {_NUM_EVAL.value} points from the true model "
           "(lower is better); ESS is per sample, (sum w)^2 / sum w^2 / K; "
           "grad_log_variance is log mean_j Var(g_j) of the encoder gradient "
           "over 64 draws at the end (its SNR is in gmm.json: it explodes "
           "where q has become deterministic and the draws agree)."]
  by = {(r["estimator"], r["k"]): r for r in results}
  for metric in METRICS:
    lines += ["", f"{metric}:", "",
              "| estimator | " + " | ".join(f"K={k}" for k in ks) + " |",
              "| --- |" + " --- |" * len(ks)]
    for name in names:
      lines.append(f"| {name} | " + " | ".join(
          f"{by[(name, k)][metric]:.4g}" for k in ks) + " |")
  return "\n".join(lines) + "\n"


def plot(results: list[dict], ks: list[int], names: list[str], path: str):
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  by = {(r["estimator"], r["k"]): r for r in results}
  for name in names:
    for ax, metric in zip(axes[:2], ("posterior_error", "prior_error")):
      ax.plot(ks, [by[(name, k)][metric] for k in ks], marker="o", ms=3,
              label=name)
    curve = by[(name, max(ks))]["curve"]
    axes[2].plot([c["step"] for c in curve],
                 [c["posterior_error"] for c in curve], label=name)
  for ax, title in zip(axes, ("posterior error at the end",
                              "prior error at the end",
                              f"posterior error, K = {max(ks)}")):
    ax.set(title=title, ylabel="L2 distance (lower is better)",
           xlabel="K" if "end" in title else "step")
    ax.set_yscale("log")
    if "end" in title:
      ax.set_xscale("log")
      ax.set_xticks(ks, [str(k) for k in ks])
      ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(alpha=0.3, which="both")
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


SEED_METRICS = ("posterior_error", "prior_error")  # lower is better


def aggregate(records_by_dir: list[list[dict]]) -> dict:
  """Means with 95% intervals and paired differences over seeds.

  Args:
    records_by_dir: each directory's gmm.json records (one seed each).

  Returns:
    {"seeds", "cells": [{estimator, k, metric, mean, half, n}],
     "pairs": report.pairwise rows, each with its "k"}.
  """
  import report  # pylint: disable=g-import-not-at-top
  runs = []
  for i, records in enumerate(records_by_dir):
    for r in records:
      runs.append({"config": {"estimator": r["estimator"], "k": r["k"],
                              "seed": r.get("seed", i)},
                   "final": {m: r[m] for m in SEED_METRICS}, "rows": []})
  seeds = sorted({r["config"]["seed"] for r in runs})
  if len(seeds) != len(records_by_dir):
    raise app.UsageError(f"--aggregate: {len(records_by_dir)} directories "
                         f"but seeds {seeds}; give one directory per seed.")
  cells = []
  for row in report.group_table(runs, ["estimator", "k"], list(SEED_METRICS)):
    for m in SEED_METRICS:
      half = row[f"{m} ±95%"]  # NO_INTERVAL (a string) for a single run
      cells.append({"estimator": row["estimator"], "k": row["k"],
                    "metric": m, "mean": row[m],
                    "half": half if isinstance(half, float) else None,
                    "n": row["runs"]})
  pairs = []
  for m in SEED_METRICS:
    for p in report.pairwise(runs, ["estimator", "k"], m,
                             higher_is_better=False, pair_within=["k"]):
      a_name, a_k = p["a"].rsplit(", ", 1)
      b_name, _ = p["b"].rsplit(", ", 1)
      pairs.append(dict(p, a=a_name, b=b_name, k=int(a_k)))
  return {"seeds": seeds, "cells": cells, "pairs": pairs}


def aggregate_markdown(agg: dict, sources: list[str]) -> str:
  fmt = lambda v: "-" if v is None else f"{v:.4g}"
  ks = sorted({c["k"] for c in agg["cells"]})
  names = list(dict.fromkeys(c["estimator"] for c in agg["cells"]))
  lines = [f"GMM errors over seeds {agg['seeds']} (one run per seed and "
           f"cell, from {', '.join(sources)}): mean [95% t interval]; lower "
           "is better.", ""]
  by = {(c["estimator"], c["k"], c["metric"]): c for c in agg["cells"]}
  for m in SEED_METRICS:
    lines += [f"{m}:", "", "| estimator | " + " | ".join(
        f"K={k}" for k in ks) + " |", "| --- |" + " --- |" * len(ks)]
    for name in names:
      cells = []
      for k in ks:
        c = by.get((name, k, m))
        cells.append("-" if c is None else f"{fmt(c['mean'])} "
                     f"[{fmt(c['mean'] - c['half'])}, "
                     f"{fmt(c['mean'] + c['half'])}]"
                     if c["half"] is not None else fmt(c["mean"]))
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
  lines += ["Paired differences A - B over the seeds, at the same K (lower "
            "error is ahead):", "",
            "| metric | K | A | B | seeds | mean A - B | 95% interval | "
            "verdict |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for p in agg["pairs"]:
    ci = ("-" if p["low"] is None
          else f"[{p['low']:+.4f}, {p['high']:+.4f}]")
    diff = "-" if p["difference"] is None else f"{p['difference']:+.4f}"
    verdict = p["verdict"].replace(f", {p['k']} ahead", " ahead")
    lines.append(f"| {p['metric']} | {p['k']} | {p['a']} | {p['b']} | "
                 f"{p['seeds']} | {diff} | {ci} | {verdict} |")
  return "\n".join(lines) + "\n"


def main_aggregate(dirs: list[str]) -> None:
  records = []
  for d in dirs:
    path = os.path.join(d, "gmm.json")
    if not os.path.exists(path):
      raise app.UsageError(f"--aggregate: {path} does not exist; run "
                           "scripts/gmm.py --output_dir=" + d + " first.")
    with open(path) as fh:
      records.append(json.load(fh))
  agg = aggregate(records)
  out = _OUTPUT_DIR.value
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "gmm_seeds.json"), "w") as fh:
    json.dump(agg, fh, indent=1)
  md = aggregate_markdown(agg, dirs)
  with open(os.path.join(out, "gmm_seeds.md"), "w") as fh:
    fh.write(md)
  print(md)
  print(f"Wrote {out}/gmm_seeds.json and gmm_seeds.md.")


def main(argv):
  del argv
  if _AGGREGATE.value:
    main_aggregate(_AGGREGATE.value)
    return
  ks = [int(k) for k in _KS.value]
  if min(ks) < 2 or _NUM_STEPS.value % _EVAL_EVERY.value:
    raise app.UsageError("--ks must be >= 2 and --num_steps a multiple of "
                         "--eval_every.")
  names = list(_ESTIMATORS.value)
  for name in names:  # refuse bad names before any training
    gradients.EstimatorSpec(name, families=("categorical",), iw_samples=2,
                            aux_samples=1 if name == "ovis_mc" else 0)
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
  model = gmm.GaussianMixture()
  results = []
  for e, name in enumerate(names):
    for k in ks:
      start = time.perf_counter()
      r = train_one(model, name, k, jax.random.fold_in(
          jax.random.key(_SEED.value), 1000 * e + k))
      r.update(estimator=name, k=k, seed=_SEED.value,
               seconds=time.perf_counter() - start)
      results.append(r)
      print(f"{name:16s} K={k:3d}  posterior error {r['posterior_error']:.4f}"
            f"  prior error {r['prior_error']:.4f}  ESS/K {r['ess']:.3f}  "
            f"log var {r['grad_log_variance']:.3g}  ({r['seconds']:.0f} s)",
            flush=True)
  out = _OUTPUT_DIR.value
  with open(os.path.join(out, "gmm.json"), "w") as fh:
    json.dump(results, fh, indent=1)
  md = markdown(results, ks, names)
  with open(os.path.join(out, "gmm.md"), "w") as fh:
    fh.write(md)
  plot(results, ks, names, os.path.join(out, "gmm.png"))
  print(md)
  print(f"Wrote {out}/gmm.json, gmm.md and gmm.png.")


if __name__ == "__main__":
  app.run(main)

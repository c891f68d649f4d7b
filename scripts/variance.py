r"""Encoder-gradient variance of every estimator at the same model parameters.

  python scripts/variance.py --output_dir=results/variance \
      --data_source=local --data_dir=$REBAR_JAX_DATA_DIR \
      --checkpoints=runs/lin-rebar   # also the initial parameters

For the linear one-layer SBN (or --nonlinear, or --model=catvae for the
categorical VAE of configs/catvae_mnist.py) at the initial parameters and at
the parameters of each given training run's latest checkpoint, every estimator
is first given `--tune_steps` steps to train its own parameters (REBAR's eta and
lambda, RELAX's network, NVIL's baseline) with the model held fixed, then the
log of the mean per-parameter variance of the encoder gradient is measured over
`--num_draws` draws on one fixed batch (the REBAR paper's variance figure;
DisARM Fig. 5). Also the signal-to-noise ratio (scale-free), the time per draw
and variance x time (variance per unit of compute). NVIL is measured without its
variance normalisation, which only rescales the gradient. With
--estimator_states_from, the estimators' own parameters at trained points start
from their own training runs. Each entry is labelled with its evaluations of f
per data point (counted in its traced estimate, `advise.f_evaluations`), so
that entries of unequal cost are not read as equal.

With --seeds=0,1,2 every measurement is repeated on its own batch with its own
draws and control-variate steps: the table and the plot give the mean over the
seeds with its 95% t interval, and the paired differences across seeds
(`scripts/report.py`'s statistics) compare the entries of equal evaluations,
and the lowest entry at each point with every other, by log variance and by
log(variance x time), "tie" where the interval contains 0. Writes
variance.json (one row per estimator, point and seed), variance.md and
variance.png.

Each row is saved as it is measured (variance.partial.json): the same command,
interrupted, resumes from the rows already measured, and refuses to if the
settings or the checkpoints' steps have changed since.
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
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import catvae_mnist  # pylint: disable=g-import-not-at-top
from configs import sbn_linear  # pylint: disable=g-import-not-at-top
from rebar_jax import advise
from rebar_jax import diagnostics
from rebar_jax import gradients
from rebar_jax import train
from rebar_jax.estimators import protocol
from rebar_jax.utils import checkpoints

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results/variance", "Output.")
_DATA_SOURCE = flags.DEFINE_string("data_source", "embedded", "Data source.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Directory for local data.")
_MODEL = flags.DEFINE_enum(
    "model", "sbn", ["sbn", "catvae"],
    "sbn: the one-layer SBN of configs/sbn_linear.py (or --nonlinear); "
    "catvae: the categorical VAE of configs/catvae_mnist.py (30 x 10).")
_NONLINEAR = flags.DEFINE_bool("nonlinear", False, "Nonlinear SBN.")
_CHECKPOINTS = flags.DEFINE_list(
    "checkpoints", [], "Workdirs of training runs whose latest checkpoint "
    "gives model parameters (same model configuration).")
_ESTIMATORS = flags.DEFINE_list(
    "estimators", ["reinforce", "nvil", "reinforce_loo", "arm", "disarm",
                   "muprop", "rebar", "relax", "concrete"],
    "Estimators; name@K sets K = loo_samples, the f evaluations per data "
    "point of reinforce_loo, arms, double_cv, rodeo, carms and "
    "unordered_set (e.g. arms@4), for "
    "comparisons at equal cost.")
_COPULA = flags.DEFINE_enum("copula", "dirichlet", ["dirichlet", "gaussian"],
                            "ARMS's copula.")
_NUM_DRAWS = flags.DEFINE_integer("num_draws", 128, "Draws per estimate.")
_TUNE_STEPS = flags.DEFINE_integer("tune_steps", 500,
                                   "Control-variate steps at fixed params.")
_STATES_FROM = flags.DEFINE_string(
    "estimator_states_from", "",
    "Optional workdir pattern with {estimator}, e.g. results/reproduce/runs/"
    "mnist_linear1-{estimator}-lr0.0003-seed0: at trained points, start each "
    "estimator's own parameters (REBAR's eta and lambda, RELAX's network, "
    "NVIL's baseline) from the latest checkpoint of its own training run, "
    "as trained alongside the model, before --tune_steps more.")


_SEEDS = flags.DEFINE_list(
    "seeds", ["0"], "Seeds. Seed s measures on its own batch (training "
    "digits 24 s to 24 s + 23) with its own draws and control-variate steps. "
    "With two or more, each figure is the mean over the seeds with its 95% t "
    "interval, and the entries are compared by paired differences across "
    "seeds (a tie where the interval contains 0).")

BATCH = 24  # the papers' batch size
TIMED_DRAWS = 20
METRICS = ("log_variance", "log_variance_x_time", "snr", "seconds_per_draw")
PARTIAL = "variance.partial.json"


def make_tune(exp, steps: int):
  """jitted (params, est_state, x, key) -> est_state after `steps` Adam steps
  on the estimator's own parameters (its variance objective), the model held
  fixed."""
  opt = exp.estimator_optimizer

  @jax.jit
  def run(params, est_state, x, key):
    def step(carry, key):
      est_state, opt_state = carry
      _, grads, stats, _ = gradients.model_gradients(
          exp.model, exp.spec, params, est_state, x, key)
      updates, opt_state = opt.update(grads, opt_state, est_state.params)
      return (gradients.EstimatorState(
          optax.apply_updates(est_state.params, updates), stats),
              opt_state), None
    carry = (est_state, opt.init(est_state.params))
    return jax.lax.scan(step, carry, jax.random.split(key, steps))[0][0]

  return run


def summarize(results: list[dict]) -> tuple[list[dict], list[dict]]:
  """Means over seeds with 95% t intervals, and paired comparisons.

  Args:
    results: one row per (estimator, point, seed) with `evaluations` and the
      METRICS.

  Returns:
    cells: one row per (estimator, point), in the order of `results`, with
      `seeds`, each metric's mean and `<metric> ±95%` (a float, or None for
      one seed);
    pairs: `report.pairwise` rows (lower is better) with their `point`,
      `metric` and `scope`: "equal evaluations" for log variance between
      entries of the same evaluations of f, "lowest" for the entry lowest in
      mean at its point against every other entry there, by log variance and
      by log(variance x time).
  """
  import report  # pylint: disable=g-import-not-at-top
  runs = [{"config": {"point": r["point"], "evaluations": r["evaluations"],
                      "estimator": r["estimator"], "seed": r["seed"]},
           "final": {m: r[m] for m in METRICS}, "rows": []} for r in results]
  keys = ["point", "evaluations", "estimator"]
  order = list(dict.fromkeys((r["estimator"], r["point"]) for r in results))
  by = {(row["estimator"], row["point"]): row
        for row in report.group_table(runs, keys, list(METRICS))}
  cells = []
  for key in order:
    row = by[key]
    cell = {"estimator": row["estimator"], "point": row["point"],
            "evaluations": row["evaluations"], "seeds": row["runs"]}
    for m in METRICS:
      half = row[f"{m} ±95%"]  # report.NO_INTERVAL (a string) for one seed
      cell[m], cell[f"{m} ±95%"] = row[m], (
          half if isinstance(half, float) else None)
    cells.append(cell)

  def split(label):
    point, evaluations, estimator = label.split(", ", 2)
    return point, float(evaluations), estimator

  pairs = []
  for p in report.pairwise(runs, keys, "log_variance", higher_is_better=False,
                           pair_within=["point", "evaluations"]):
    point, _, a = split(p["a"])
    pairs.append(dict(p, a=a, b=split(p["b"])[2], point=point,
                      scope="equal evaluations"))
  for metric in ("log_variance", "log_variance_x_time"):
    for point in dict.fromkeys(c["point"] for c in cells):
      here = [c for c in cells if c["point"] == point]
      low = min(here, key=lambda c: c[metric])["estimator"]
      for p in report.pairwise([r for r in runs
                                if r["config"]["point"] == point], keys,
                               metric, higher_is_better=False):
        a, b = split(p["a"])[2], split(p["b"])[2]
        if low in (a, b):
          pairs.append(dict(p, a=a, b=b, point=point, scope="lowest"))
  return cells, pairs


def _ci(cell: dict, metric: str) -> str:
  mean, half = cell[metric], cell[f"{metric} ±95%"]
  return (f"{mean:.2f}" if half is None
          else f"{mean:.2f} [{mean - half:.2f}, {mean + half:.2f}]")


def _verdict(pair: dict) -> str:
  """report.pairwise's verdict with the group label ("point, evals, name
  ahead") cut to the estimator's name."""
  verdict = pair["verdict"]
  if verdict.endswith(" ahead"):
    return verdict[:-len(" ahead")].rsplit(", ", 1)[-1] + " ahead"
  return verdict


def markdown(cells: list[dict], pairs: list[dict], seeds: list[int]) -> str:
  """The table over seeds, then the paired comparisons."""
  lines = [f"Encoder-gradient log-variance over {_NUM_DRAWS.value} draws on a "
           f"batch of {BATCH}, after {_TUNE_STEPS.value} control-variate steps "
           f"at fixed model parameters, seeds {seeds} (one batch each); "
           f"{jax.default_backend()} backend. With several seeds: the mean "
           "over the seeds [95% t interval]. f evals: evaluations of f per "
           "data point and layer in one draw (counted in the traced "
           "estimate); ms/draw: the mean over the seeds.", "",
           "| estimator | f evals | point | log variance | vs REINFORCE | "
           "vs NVIL | SNR | ms/draw | log(variance x time) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  def relative(c, to):
    base = {q["point"]: q["log_variance"] for q in cells
            if q["estimator"] == to}
    return (f"{np.exp(c['log_variance'] - base[c['point']]):.3g}"
            if c["point"] in base else "-")
  for c in cells:
    lines.append(
        f"| {c['estimator']} | {c['evaluations']:g} | {c['point']} | "
        f"{_ci(c, 'log_variance')} | {relative(c, 'reinforce')} | "
        f"{relative(c, 'nvil')} | {c['snr']:.3f} | "
        f"{1e3 * c['seconds_per_draw']:.2f} | "
        f"{_ci(c, 'log_variance_x_time')} |")
  if len(seeds) > 1:
    lines += ["", "Paired differences A - B across the seeds (lower is "
              "ahead): log variance between entries of equal f evaluations, "
              "and the lowest entry at each point against every other.", "",
              "| scope | metric | point | A | B | seeds | mean A - B | "
              "95% interval | verdict |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in pairs:
      ci = ("-" if p["low"] is None
            else f"[{p['low']:+.2f}, {p['high']:+.2f}]")
      diff = "-" if p["difference"] is None else f"{p['difference']:+.2f}"
      lines.append(f"| {p['scope']} | {p['metric']} | {p['point']} | "
                   f"{p['a']} | {p['b']} | {p['seeds']} | {diff} | {ci} | "
                   f"{_verdict(p)} |")
  return "\n".join(lines) + "\n"


def plot(cells: list[dict], path: str) -> None:
  """Log variance and log(variance x time) per entry and point, with 95%
  intervals over the seeds; each entry labelled with its f evaluations."""
  names = list(dict.fromkeys(c["estimator"] for c in cells))
  points = list(dict.fromkeys(c["point"] for c in cells))
  by = {(c["estimator"], c["point"]): c for c in cells}
  evals = {c["estimator"]: c["evaluations"] for c in cells}
  fig, axes = plt.subplots(2, 1, figsize=(max(9, 0.7 * len(names)), 7),
                           sharex=True)
  width = 0.8 / len(points)
  for ax, metric, ylabel in zip(
      axes, ("log_variance", "log_variance_x_time"),
      ("log variance of the encoder gradient", "log(variance x s per draw)")):
    for i, point in enumerate(points):
      vals = [by[n, point][metric] for n in names]
      err = [by[n, point][f"{metric} ±95%"] or 0.0 for n in names]
      ax.bar(np.arange(len(names)) + i * width, vals, width, yerr=err,
             capsize=3, label=point)
    ax.set(ylabel=ylabel)
  axes[0].legend(fontsize=8)
  seeds = max(c["seeds"] for c in cells)
  axes[0].set_title(
      f"95% t intervals over {seeds} seeds" if seeds > 1
      else "one seed: no interval", fontsize=9)
  axes[1].set_xticks(
      np.arange(len(names)) + width * (len(points) - 1) / 2,
      [f"{n}\n{evals[n]:g} f evals" for n in names], rotation=45,
      ha="right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _settings(points: list[str], states: dict[str, str]) -> dict:
  """What a measured row depends on, besides its estimator and seed: the
  points' labels (workdir@step) and those of the estimators' own runs."""
  return {"points": points, "states": states, "model": _MODEL.value,
          "nonlinear": _NONLINEAR.value, "data_source": _DATA_SOURCE.value,
          "data_dir": _DATA_DIR.value, "copula": _COPULA.value,
          "num_draws": _NUM_DRAWS.value, "tune_steps": _TUNE_STEPS.value,
          "estimator_states_from": _STATES_FROM.value}


def load_partial(path: str, settings: dict) -> dict:
  """{(estimator, point, seed): row} saved by an interrupted run of the same
  settings; {} if there is none; a UsageError if its settings differ."""
  if not os.path.exists(path):
    return {}
  with open(path) as fh:
    saved = json.load(fh)
  changed = [k for k in settings if saved["settings"].get(k) != settings[k]]
  if changed:
    raise app.UsageError(
        f"{path} holds rows measured with other {', '.join(changed)}: "
        "rerun with the same settings to resume, or delete it to start over.")
  return {(r["estimator"], r["point"], r["seed"]): r for r in saved["rows"]}


def save_partial(path: str, settings: dict, rows: list[dict]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as fh:
    json.dump({"settings": settings, "rows": rows}, fh, indent=1)
  os.replace(tmp, path)


def main(argv):
  del argv
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
  seeds = [int(s) for s in _SEEDS.value]

  def label_of(workdir):
    step = checkpoints.Checkpointer(
        os.path.join(workdir, "checkpoints")).latest_step()
    return f"{os.path.basename(workdir.rstrip('/'))}@{step}"

  import report  # pylint: disable=g-import-not-at-top
  # A sweep trial's directory has commas in its name, which the list flag
  # splits on: report.patterns joins the pieces back.
  workdirs = report.patterns(_CHECKPOINTS.value)
  for workdir in workdirs:
    if not os.path.isfile(os.path.join(workdir, "config.json")):
      raise app.UsageError(f"--checkpoints: {workdir} is not a training run's "
                           "workdir (no config.json); name one.")
  points = [("init", None)] + [(label_of(d), d) for d in workdirs]
  own_runs = {}  # estimator -> the workdir of its own training run
  for name in _ESTIMATORS.value:
    own = _STATES_FROM.value.format(estimator=name)
    if own and os.path.isdir(os.path.join(own, "checkpoints")):
      own_runs[name] = own
  settings = _settings([label for label, _ in points],
                       {name: label_of(d) for name, d in own_runs.items()})
  partial = os.path.join(_OUTPUT_DIR.value, PARTIAL)
  done = load_partial(partial, settings)
  if done:
    print(f"Resuming: {len(done)} rows measured earlier ({partial}).",
          flush=True)

  def config(token):
    """The config of an --estimators token, name or name@K."""
    estimator, _, k = token.partition("@")
    if _MODEL.value == "catvae":
      c = catvae_mnist.get_config()
    else:
      c = sbn_linear.get_config()
      c.nonlinear = _NONLINEAR.value
    c.estimator, c.data_source, c.data_dir = (estimator, _DATA_SOURCE.value,
                                              _DATA_DIR.value)
    c.copula = _COPULA.value
    if k:
      c.loo_samples = int(k)
    return c

  def restore(workdir, estimator):
    like = train.init_state(train.build(config(estimator)), 0)
    return checkpoints.Checkpointer(
        os.path.join(workdir, "checkpoints")).restore(like)

  saved = {}
  for label, workdir in points[1:]:
    with open(os.path.join(workdir, "config.json")) as fh:
      run_estimator = json.load(fh)["estimator"]
    saved[label] = restore(workdir, run_estimator).params

  results = []
  for name in _ESTIMATORS.value:
    keys_of = [(name, label, seed) for label, _ in points for seed in seeds]
    if all(k in done for k in keys_of):
      results.extend(done[k] for k in keys_of)
      continue
    exp = train.build(config(name))
    batches = {s: jnp.asarray(exp.dataset.train[BATCH * s:BATCH * (s + 1)])
               for s in seeds}
    if any(len(x) < BATCH for x in batches.values()):
      raise app.UsageError(f"--seeds={_SEEDS.value}: the training set has "
                           f"{len(exp.dataset.train)} digits, {BATCH} per "
                           "seed; choose smaller seeds.")
    stats = jax.jit(lambda p, s, x, k: diagnostics.gradient_statistics(
        exp.model, exp.spec, p, s, x, k, _NUM_DRAWS.value))
    one = jax.jit(lambda p, s, x, k: gradients.model_gradients(
        exp.model, exp.spec, p, s, x, k)[0])
    tune = make_tune(exp, _TUNE_STEPS.value)
    for label, workdir in points:
      state = train.init_state(exp, 0)
      if workdir is not None:
        state = state._replace(params=saved[label])
      evaluations = advise.f_evaluations(exp, state.params, batches[seeds[0]])
      start = state.estimator  # every seed tunes from the same start
      if (workdir is not None and name in own_runs
          and jax.tree.leaves(start.params)):
        start = restore(own_runs[name], name).estimator
      for seed in seeds:
        if (name, label, seed) in done:
          results.append(done[(name, label, seed)])
          continue
        x = batches[seed]
        key_tune, key_stats, key_time = jax.random.split(
            jax.random.key(seed), 3)
        est_state = start
        if _TUNE_STEPS.value and jax.tree.leaves(est_state.params):
          est_state = tune(state.params, est_state, x, key_tune)
        # NVIL's division by the running sd of the signal is a step size, not
        # a variance reduction: measure the baseline's effect alone.
        est_state = protocol.unit_scale(est_state)
        out = stats(state.params, est_state, x, key_stats)
        keys = jax.random.split(key_time, TIMED_DRAWS + 1)
        jax.block_until_ready(one(state.params, est_state, x, keys[0]))
        t = time.perf_counter()
        for k in keys[1:]:
          jax.block_until_ready(one(state.params, est_state, x, k))
        per_draw = (time.perf_counter() - t) / TIMED_DRAWS
        row = {"estimator": name, "point": label, "seed": seed,
               "evaluations": evaluations,
               "log_variance": float(out["grad_log_variance"]),
               "snr": float(out["grad_snr"]), "seconds_per_draw": per_draw}
        row["log_variance_x_time"] = row["log_variance"] + np.log(per_draw)
        results.append(row)
        save_partial(partial, settings, results)
        print(row, flush=True)

  with open(os.path.join(_OUTPUT_DIR.value, "variance.json"), "w") as fh:
    json.dump(results, fh, indent=2)
  cells, pairs = summarize(results)
  md = markdown(cells, pairs, seeds)
  with open(os.path.join(_OUTPUT_DIR.value, "variance.md"), "w") as fh:
    fh.write(md)
  print(md)
  plot(cells, os.path.join(_OUTPUT_DIR.value, "variance.png"))
  if os.path.exists(partial):
    os.remove(partial)


if __name__ == "__main__":
  app.run(main)

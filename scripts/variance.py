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
from their own training runs. Writes
variance.json, variance.md and variance.png.
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


def tune(exp, params, est_state, x, steps: int):
  """Trains only the estimator's parameters, the model held fixed."""
  opt = exp.estimator_optimizer
  opt_state = opt.init(est_state.params)

  @jax.jit
  def run(est_state, opt_state, keys):
    def step(carry, key):
      est_state, opt_state = carry
      _, grads, stats, _ = gradients.model_gradients(
          exp.model, exp.spec, params, est_state, x, key)
      updates, opt_state = opt.update(grads, opt_state, est_state.params)
      est_state = gradients.EstimatorState(
          optax.apply_updates(est_state.params, updates), stats)
      return (est_state, opt_state), None
    return jax.lax.scan(step, (est_state, opt_state), keys)[0]

  return run(est_state, opt_state,
             jax.random.split(jax.random.key(7), steps))[0]


def main(argv):
  del argv
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
  def label_of(workdir):
    step = checkpoints.Checkpointer(
        os.path.join(workdir, "checkpoints")).latest_step()
    return f"{os.path.basename(workdir.rstrip('/'))}@{step}"

  points = [("init", None)] + [(label_of(d), d) for d in _CHECKPOINTS.value]
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
    exp = train.build(config(name))
    x = jnp.asarray(exp.dataset.train[:24])  # the papers' batch size
    stats = jax.jit(lambda p, s, k: diagnostics.gradient_statistics(
        exp.model, exp.spec, p, s, x, k, _NUM_DRAWS.value))
    one = jax.jit(lambda p, s, k: gradients.model_gradients(
        exp.model, exp.spec, p, s, x, k)[0])
    for label, workdir in points:
      state = train.init_state(exp, 0)
      if workdir is not None:
        state = state._replace(params=saved[label])
      est_state = state.estimator
      own = _STATES_FROM.value.format(estimator=name)
      if (workdir is not None and own and jax.tree.leaves(est_state.params)
          and os.path.isdir(os.path.join(own, "checkpoints"))):
        est_state = restore(own, name).estimator
      if _TUNE_STEPS.value and jax.tree.leaves(est_state.params):
        est_state = tune(exp, state.params, est_state, x, _TUNE_STEPS.value)
      # NVIL's division by the running sd of the signal is a step size, not
      # a variance reduction: measure the baseline's effect alone.
      est_state = protocol.unit_scale(est_state)
      out = stats(state.params, est_state, jax.random.key(0))
      jax.block_until_ready(one(state.params, est_state, jax.random.key(1)))
      t = time.perf_counter()
      for i in range(20):
        jax.block_until_ready(one(state.params, est_state, jax.random.key(i)))
      per_draw = (time.perf_counter() - t) / 20
      row = {"estimator": name, "point": label,
             "log_variance": float(out["grad_log_variance"]),
             "snr": float(out["grad_snr"]), "seconds_per_draw": per_draw}
      row["log_variance_x_time"] = row["log_variance"] + np.log(per_draw)
      results.append(row)
      print(row)

  with open(os.path.join(_OUTPUT_DIR.value, "variance.json"), "w") as fh:
    json.dump(results, fh, indent=2)
  md = [f"Encoder-gradient log-variance over {_NUM_DRAWS.value} draws on one "
        f"batch of 24, after {_TUNE_STEPS.value} control-variate steps at fixed "
        f"model parameters; {jax.default_backend()} backend.", "",
        "| estimator | point | log variance | vs REINFORCE | vs NVIL | SNR "
        "| ms/draw | log(variance x time) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  def relative(r, to):
    base = {q["point"]: q["log_variance"] for q in results
            if q["estimator"] == to}
    return (f"{np.exp(r['log_variance'] - base[r['point']]):.3g}"
            if r["point"] in base else "-")
  for r in results:
    md.append(f"| {r['estimator']} | {r['point']} | {r['log_variance']:.2f} | "
              f"{relative(r, 'reinforce')} | {relative(r, 'nvil')} | "
              f"{r['snr']:.3f} | {1e3 * r['seconds_per_draw']:.2f} | "
              f"{r['log_variance_x_time']:.2f} |")
  with open(os.path.join(_OUTPUT_DIR.value, "variance.md"), "w") as fh:
    fh.write("\n".join(md) + "\n")
  print("\n".join(md))

  fig, ax = plt.subplots(figsize=(9, 4))
  labels = [p for p, _ in points]
  width = 0.8 / len(labels)
  names = _ESTIMATORS.value
  for i, label in enumerate(labels):
    vals = [next(r["log_variance"] for r in results
                 if r["estimator"] == n and r["point"] == label) for n in names]
    ax.bar(np.arange(len(names)) + i * width, vals, width, label=label)
  ax.set_xticks(np.arange(len(names)) + width * (len(labels) - 1) / 2, names,
                rotation=30)
  ax.set(ylabel="log variance of the encoder gradient")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(_OUTPUT_DIR.value, "variance.png"), dpi=110)


if __name__ == "__main__":
  app.run(main)

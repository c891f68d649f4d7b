r"""The toy problem of the REBAR and RELAX papers: minimise E[(b - t)^2].

b ~ Bernoulli(theta), theta = sigmoid(l); the optimum is theta -> 0 for t < 1/2,
and the true gradient d/dl E = (1 - 2t) theta (1 - theta) is tiny for t = 0.499
(Tucker et al. 2017, Fig. 1; Grathwohl et al. 2018, Fig. 1; seeds 000 and 001).

Every estimator starts at theta = 1/2 and takes `num_steps` Adam steps on one
draw of its gradient per step. REBAR tunes (eta, log lambda) and RELAX
(log lambda, MLP) online by Adam on the variance gradient of the same draw. At
every step the log-variance of the gradient estimator at the current parameters
is measured from `num_variance_draws` extra draws; where all of them are equal
(theta near 0, where a rare event carries the whole variance) the step's
log-variance is below what the draws can measure and is left out (counted in the
table). All estimators of a target run in one jitted `lax.scan`.

With one latent the antithetic estimators (ARM, DisARM) and the leave-one-out
baseline are close to exact: this toy shows what a control variate does to
REINFORCE, not how estimators compare on models (see scripts/variance.py).

Writes to --output_dir: toy.csv (per step), toy.md (summary table), toy.png.

  python scripts/toy.py --output_dir=results/toy
"""
import csv
import functools
import os
import time
from typing import Callable, NamedTuple

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
import optax
from tqdm import tqdm

from rebar_jax import estimators
from rebar_jax.estimators import bernoulli
from rebar_jax.estimators import control_variates as cv

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results/toy", "Where to write.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 5000, "Adam steps.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 0.01, "Adam on theta.")
_CV_LEARNING_RATE = flags.DEFINE_float("cv_learning_rate", 0.01,
                                       "Adam on the control variates.")
_TARGETS = flags.DEFINE_list("targets", ["0.45", "0.499"], "Values of t.")
_NUM_VARIANCE_DRAWS = flags.DEFINE_integer(
    "num_variance_draws", 256, "Draws per step to measure the variance.")
_SEED = flags.DEFINE_integer("seed", 0, "Root seed.")
_CHUNK = 250  # steps per host call (progress bar granularity)

ESTIMATORS = ("reinforce", "reinforce_loo", "arm", "disarm", "concrete",
              "rebar", "relax")
LABELS = {"reinforce": "REINFORCE", "reinforce_loo": "REINFORCE-LOO (n=2)",
          "arm": "ARM", "disarm": "DisARM", "concrete": "Concrete(0.5)",
          "rebar": "REBAR (tuned)", "relax": "RELAX (tuned)"}


class Learner(NamedTuple):
  logits: jax.Array
  opt_state: optax.OptState
  cv_params: object  # () for estimators without a control variate
  cv_state: optax.OptState


def make_gradient_fn(name: str) -> Callable:
  """(key, logits, f, cv_params) -> (gradient draw, variance grad of cv)."""
  if name == "rebar":
    return lambda k, l, f, p: cv.variance_gradient(
        lambda q: cv.rebar_with_params(k, l, f, q), p)
  if name == "relax":
    return lambda k, l, f, p: cv.variance_gradient(
        lambda q: estimators.relax(k, l, f, cv_params=q), p)
  options = {"concrete": {"temperature": 0.5}}.get(name, {})
  est = functools.partial(estimators.BERNOULLI[name], **options)
  return lambda k, l, f, p: (est(k, l, f), ())


def init_cv(name: str, key: jax.Array):
  if name == "rebar":
    return cv.RebarParams.create(eta=1.0, temperature=0.5)
  if name == "relax":
    return bernoulli.init_relax_params(key, 1, hidden=(5, 5), temperature=0.5)
  return ()


def run_target(t: float, key: jax.Array, num_steps: int):
  """All estimators on one target; returns dict name -> (theta, loss, logvar)."""
  f = lambda b: jnp.sum((b - t) ** 2)
  opt = optax.adam(_LEARNING_RATE.value)
  cv_opt = optax.adam(_CV_LEARNING_RATE.value)
  grad_fns = {name: make_gradient_fn(name) for name in ESTIMATORS}

  learners = {}
  for i, name in enumerate(ESTIMATORS):
    logits = jnp.zeros((1,))
    params = init_cv(name, jax.random.fold_in(key, 1000 + i))
    learners[name] = Learner(logits, opt.init(logits), params,
                             cv_opt.init(params))

  def step(learners, step_key):
    new, metrics = {}, {}
    for i, name in enumerate(ESTIMATORS):
      lr = learners[name]
      k_grad, k_var = jax.random.split(jax.random.fold_in(step_key, i))
      grad, cv_grad = grad_fns[name](k_grad, lr.logits, f, lr.cv_params)
      draws = jax.vmap(lambda k: grad_fns[name](k, lr.logits, f,
                                                lr.cv_params)[0])(
                                                    jax.random.split(
                                                        k_var,
                                                        _NUM_VARIANCE_DRAWS.value))
      updates, opt_state = opt.update(grad, lr.opt_state)
      logits = optax.apply_updates(lr.logits, updates)
      cv_updates, cv_state = cv_opt.update(cv_grad, lr.cv_state)
      cv_params = optax.apply_updates(lr.cv_params, cv_updates)
      new[name] = Learner(logits, opt_state, cv_params, cv_state)
      theta = jax.nn.sigmoid(lr.logits[0])
      metrics[name] = (theta, theta * (1 - t) ** 2 + (1 - theta) * t**2,
                       jnp.log(jnp.var(draws)))
    return new, metrics

  @jax.jit
  def run_chunk(learners, keys):
    return jax.lax.scan(step, learners, keys)

  keys = jax.random.split(key, num_steps)
  chunks = []
  for start in tqdm(range(0, num_steps, _CHUNK), desc=f"t={t}", unit="chunk"):
    learners, metrics = run_chunk(learners, keys[start:start + _CHUNK])
    chunks.append(metrics)
  out = {}
  for name in ESTIMATORS:
    theta, loss, logvar = (
        np.concatenate([np.asarray(c[name][j]) for c in chunks])
        for j in range(3))
    out[name] = (theta, loss, np.where(np.isfinite(logvar), logvar, np.nan))
  return out


def steps_to_right_side(theta: np.ndarray) -> str:
  """First step after which theta stays below 1/2 for the rest of the run."""
  wrong = np.nonzero(theta >= 0.5)[0]
  if len(wrong) == 0:
    return "0"
  if wrong[-1] == len(theta) - 1:
    return "never"
  return str(int(wrong[-1]) + 1)


def main(argv):
  del argv
  num_steps = _NUM_STEPS.value - _NUM_STEPS.value % _CHUNK
  if num_steps <= 0:
    raise app.UsageError(f"--num_steps must be >= {_CHUNK}.")
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
  targets = [float(t) for t in _TARGETS.value]
  root = jax.random.key(_SEED.value)
  results = {}
  start = time.perf_counter()
  for i, t in enumerate(targets):
    results[t] = run_target(t, jax.random.fold_in(root, i), num_steps)
  elapsed = time.perf_counter() - start

  with open(os.path.join(_OUTPUT_DIR.value, "toy.csv"), "w", newline="") as fh:
    writer = csv.writer(fh)
    writer.writerow(["target", "estimator", "step", "theta", "expected_loss",
                     "log_variance"])
    for t, res in results.items():
      for name, (theta, loss, logvar) in res.items():
        for s in range(num_steps):
          writer.writerow([t, name, s, f"{theta[s]:.6g}", f"{loss[s]:.6g}",
                           f"{logvar[s]:.6g}"])

  lines = [f"Toy problem, {num_steps} Adam steps (lr {_LEARNING_RATE.value}), "
           f"one gradient draw per step, variance from "
           f"{_NUM_VARIANCE_DRAWS.value} draws per step; "
           f"{jax.default_backend()} backend, {elapsed:.0f} s in all.", ""]
  for t, res in results.items():
    base = res["reinforce"][2]
    lines += [f"t = {t}", "",
              "| estimator | final theta | steps to theta < 1/2 for good "
              "| mean log-variance | steps with no measured spread "
              "| variance / REINFORCE's (same steps) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, (theta, _, logvar) in res.items():
      both = np.isfinite(logvar) & np.isfinite(base)
      ratio = np.exp(np.mean(logvar[both] - base[both])) if both.any() else np.nan
      lines.append(
          f"| {LABELS[name]} | {theta[-1]:.4f} | {steps_to_right_side(theta)} "
          f"| {np.nanmean(logvar):.2f} | {int(np.sum(np.isnan(logvar)))} "
          f"| {ratio:.3g} |")
    lines.append("")
  table = "\n".join(lines)
  with open(os.path.join(_OUTPUT_DIR.value, "toy.md"), "w") as fh:
    fh.write(table + "\n")
  print(table)

  fig, axes = plt.subplots(len(targets), 2, figsize=(12, 4 * len(targets)),
                           squeeze=False)
  for row, (t, res) in enumerate(results.items()):
    for name, (theta, loss, logvar) in res.items():
      axes[row, 0].plot(loss, label=LABELS[name], lw=1)
      smooth = np.convolve(logvar, np.ones(50) / 50, mode="valid")
      axes[row, 1].plot(smooth, label=LABELS[name], lw=1)
    axes[row, 0].set(title=f"t = {t}: expected loss E[(b - t)^2]",
                     xlabel="step", ylabel="loss")
    axes[row, 1].set(title=f"t = {t}: log-variance of the gradient "
                     "(50-step mean)", xlabel="step", ylabel="log variance")
    axes[row, 0].axhline(t**2, color="k", ls=":", lw=0.8)
    axes[row, 0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(_OUTPUT_DIR.value, "toy.png"), dpi=110)
  print(f"Wrote toy.csv, toy.md and toy.png to {_OUTPUT_DIR.value}")


if __name__ == "__main__":
  app.run(main)

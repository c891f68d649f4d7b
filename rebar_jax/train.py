r"""Training discrete-latent VAEs with any estimator: `train_and_evaluate`.

    python -m rebar_jax.train --config=configs/sbn_mnist.py --workdir=runs/sbn
    python -m rebar_jax.train --config=configs/sbn_mnist.py \
        --config.estimator=disarm --config.num_steps=20000

One pure train step `(state, x, step) -> (state, metrics)`: the estimator's
gradients (`rebar_jax.gradients`) feed an optax optimiser for the model and a
separate optax optimiser for the estimator's own parameters (REBAR's eta and
lambda, RELAX's networks, NVIL's baseline), trained to minimise the estimator's
variance as in the REBAR/RELAX papers. `config.steps_per_call` steps run inside
one jitted `lax.scan` with the state donated; the host only sees each chunk's
metrics. Keys: one root key from `config.seed`, split(fold_in(root, step)) for
each step (computed for a whole chunk at once), so a resumed run draws exactly
the noise of an uninterrupted one.
Minibatches are the rows of a per-epoch permutation drawn on the host from
(seed, epoch), also a function of the step alone.

Outputs in `workdir`: checkpoints/ (orbax), metrics.jsonl, metrics.csv,
tensorboard/ event files, curves.png, and the final evaluation in
final_metrics.json.
"""
import dataclasses
import functools
import json
import os
import time
from typing import Any, NamedTuple, Optional

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax
from tqdm import tqdm

from rebar_jax import data as data_lib
from rebar_jax import diagnostics
from rebar_jax import gradients
from rebar_jax import objectives
from rebar_jax.models import categorical_vae as cat_lib
from rebar_jax.models import sbn as sbn_lib
from rebar_jax.utils import checkpoints
from rebar_jax.utils import plots
from rebar_jax.utils import writers

Array = jax.Array
Params = Any


class TrainState(NamedTuple):
  """Everything a run needs to continue exactly: a pytree of arrays."""
  step: Array
  params: Params
  opt_state: optax.OptState
  estimator: gradients.EstimatorState
  estimator_opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class Experiment:
  """The pieces built from a config: data, model, estimator, optimisers."""
  dataset: data_lib.Dataset
  model: Any  # sbn_lib.SBN or cat_lib.CategoricalVAE
  spec: gradients.EstimatorSpec
  optimizer: optax.GradientTransformation
  estimator_optimizer: optax.GradientTransformation


def _check_config(config: ml_collections.ConfigDict) -> None:
  positive = ("batch_size", "num_steps", "steps_per_call", "eval_every",
              "checkpoint_every", "eval_num_samples", "eval_batch_size")
  for name in positive:
    if int(config[name]) < 1:
      raise ValueError(f"config.{name} must be >= 1, got {config[name]}.")
  for name in ("learning_rate", "estimator_learning_rate", "temperature"):
    if not float(config[name]) > 0:
      raise ValueError(f"config.{name} must be > 0, got {config[name]}.")
  if config.model not in MODELS:
    raise ValueError(f"config.model={config.model!r} is unknown; choose one "
                     f"of {MODELS}.")
  sizes = (("num_layers", "num_latents") if config.model == "sbn" else
           ("num_vars", "num_classes"))
  for name in sizes:
    if int(config[name]) < 1:
      raise ValueError(f"config.{name} must be >= 1, got {config[name]}.")
  for name in ("eval_every", "checkpoint_every"):
    if config[name] % config.steps_per_call:
      raise ValueError(
          f"config.{name}={config[name]} must be a multiple of "
          f"config.steps_per_call={config.steps_per_call}.")


MODELS = ("sbn", "categorical_vae")


def build(config: ml_collections.ConfigDict) -> Experiment:
  """Data, model, estimator and optimisers from a config (validated)."""
  _check_config(config)
  spec = gradients.EstimatorSpec(
      name=config.estimator,
      family="bernoulli" if config.model == "sbn" else "categorical",
      temperature=config.temperature, eta=config.eta,
      num_samples=config.estimator_num_samples,
      tune=config.tune_estimator,
      relax_hidden=tuple(config.relax_hidden),
      num_iw_samples=config.num_samples)
  dataset = data_lib.load_dataset(
      config.dataset, config.data_source, config.data_dir or None,
      seed=config.seed)
  if config.model == "sbn":
    model = sbn_lib.SBN(
        num_layers=config.num_layers, num_latents=config.num_latents,
        nonlinear=config.nonlinear, hidden=config.hidden,
        data_dim=dataset.data_dim, train_mean=dataset.train_mean)
  else:
    model = cat_lib.CategoricalVAE(
        num_vars=config.num_vars, num_classes=config.num_classes,
        hidden=tuple(config.mlp_hidden), data_dim=dataset.data_dim,
        learned_prior=config.learned_prior, train_mean=dataset.train_mean)
  return Experiment(dataset, model, spec, optax.adam(config.learning_rate),
                    optax.adam(config.estimator_learning_rate))


def init_state(exp: Experiment, seed: int) -> TrainState:
  key_model, key_est = jax.random.split(jax.random.key(seed))
  x = jnp.zeros((1, exp.model.data_dim))
  if isinstance(exp.model, sbn_lib.SBN):
    b = tuple(jnp.zeros((1, exp.model.num_latents))
              for _ in range(exp.model.num_layers))
  else:
    b = jnp.zeros((1, exp.model.num_vars, exp.model.num_classes))
  params = exp.model.init(key_model, x, b)
  est = exp.spec.init(key_est, exp.model)
  return TrainState(jnp.zeros((), jnp.int32), params,
                    exp.optimizer.init(params), est,
                    exp.estimator_optimizer.init(est.params))


def make_train_chunk(exp: Experiment, seed: int):
  """jit(scan(train_step)) over a (K, B) block of minibatch indices."""
  root = jax.random.key(seed)
  dynamic = exp.dataset.dynamic_binarization

  def train_step(state: TrainState, batch_index: Array, step_keys: Array,
                 train_x: Array):
    key_bin, key_est = step_keys
    x = train_x[batch_index]
    if dynamic:
      x = (jax.random.uniform(key_bin, x.shape) < x).astype(jnp.float32)
    grads, est_grads, stats, metrics = gradients.model_gradients(
        exp.model, exp.spec, state.params, state.estimator, x, key_est)
    updates, opt_state = exp.optimizer.update(grads, state.opt_state,
                                              state.params)
    params = optax.apply_updates(state.params, updates)
    est_updates, est_opt_state = exp.estimator_optimizer.update(
        est_grads, state.estimator_opt_state, state.estimator.params)
    est = gradients.EstimatorState(
        optax.apply_updates(state.estimator.params, est_updates), stats)
    finite = jnp.isfinite(metrics["elbo"]) & jnp.all(jnp.asarray(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    metrics = dict(metrics, finite=finite)
    return TrainState(state.step + 1, params, opt_state, est,
                      est_opt_state), metrics

  @functools.partial(jax.jit, donate_argnums=0)
  def train_chunk(state, indices, train_x):
    # split(fold_in(root, step)) for every step of the chunk in one batched
    # call: on CPU each threefry call is a rolled loop, so a per-step call
    # costs ~tens of microseconds of loop overhead per step at batch 24.
    steps = state.step + jnp.arange(indices.shape[0], dtype=state.step.dtype)
    keys = jax.vmap(lambda s: jax.random.split(jax.random.fold_in(root, s)))(
        steps)
    return jax.lax.scan(lambda s, ik: train_step(s, *ik, train_x), state,
                        (indices, keys))

  return train_chunk


def batch_indices(seed: int, num_examples: int, batch_size: int, start: int,
                  num_steps: int) -> np.ndarray:
  """Rows for steps [start, start + num_steps): epoch e is a permutation drawn
  from (seed, e), cut into full batches (the remainder of an epoch is skipped).
  """
  per_epoch = num_examples // batch_size
  if per_epoch < 1:
    raise ValueError(
        f"batch_size={batch_size} exceeds the {num_examples} training examples.")
  out, cache = np.empty((num_steps, batch_size), np.int32), {}
  for i, step in enumerate(range(start, start + num_steps)):
    epoch, pos = divmod(step, per_epoch)
    if epoch not in cache:
      cache = {epoch: np.random.default_rng([seed, epoch]).permutation(
          num_examples)}
    out[i] = cache[epoch][pos * batch_size:(pos + 1) * batch_size]
  return out


def _binarized(x: np.ndarray, dataset: data_lib.Dataset, seed: int) -> Array:
  """x itself for static data; one fixed Bernoulli draw for dynamic data."""
  if not dataset.dynamic_binarization:
    return jnp.asarray(x)
  u = np.random.default_rng(seed).uniform(size=x.shape)
  return jnp.asarray((u < x).astype(np.float32))


def evaluate(exp: Experiment, params: Params, config, split: str
             ) -> dict[str, float]:
  data = getattr(exp.dataset, split)
  if config.eval_max_examples:
    data = data[:config.eval_max_examples]
  res = objectives.evaluate(
      exp.model, params, data, jax.random.key(config.eval_seed),
      num_samples=config.eval_num_samples, batch_size=config.eval_batch_size,
      dynamic_binarization=exp.dataset.dynamic_binarization)
  return {f"{split}_elbo": res["elbo"],
          f"{split}_iw{config.eval_num_samples}": res["iw_bound"]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_after: Optional[int] = None) -> dict[str, Any]:
  """Trains, evaluates and checkpoints; resumes from `workdir` if possible.

  Args:
    config: see configs/sbn_mnist.py for the fields.
    workdir: output directory; a checkpoint there is resumed.
    stop_after: stop (as if interrupted) after this many steps of this call;
      used to test exact resumption.

  Returns:
    The final metrics (also written to workdir/final_metrics.json).

  Raises:
    FloatingPointError: a non-finite ELBO or gradient; the last good
      checkpoint is kept.
  """
  exp = build(config)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as fh:
    fh.write(config.to_json_best_effort(indent=2))
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
  state = init_state(exp, config.seed)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state)
    print(f"Resuming from step {int(state.step)} in {workdir}")
  start = int(state.step)
  train_chunk = make_train_chunk(exp, config.seed)
  train_x = jnp.asarray(exp.dataset.train)
  metric_writer = writers.MetricWriter(workdir, resume_step=start)
  k = config.steps_per_call
  end = config.num_steps if stop_after is None else min(
      config.num_steps, start + stop_after)
  print(f"{exp.dataset}\n{exp.model.__class__.__name__}, estimator "
        f"{config.estimator}: steps {start}..{end} on {jax.default_backend()}")

  diagnose = diagnostics.make_diagnostics(
      exp.model, exp.spec, config.diagnostic_draws, config.eval_num_samples)
  x_diag = _binarized(exp.dataset.train[:config.batch_size], exp.dataset,
                      config.eval_seed)
  x_many = _binarized(exp.dataset.valid[:1000], exp.dataset, config.eval_seed)
  bar = tqdm(total=end - start, desc=f"{config.estimator}", unit="step",
             dynamic_ncols=True, disable=not config.progress_bar)
  tic, step = time.perf_counter(), start
  while step < end:
    n = min(k, end - step)
    indices = batch_indices(config.seed, exp.dataset.train.shape[0],
                            config.batch_size, step, n)
    state, metrics = train_chunk(state, jnp.asarray(indices), train_x)
    metrics = jax.device_get(metrics)
    if not np.all(metrics["finite"]):
      bad = step + int(np.argmin(metrics["finite"]))
      raise FloatingPointError(
          f"Non-finite ELBO or gradient at step {bad} with estimator "
          f"{config.estimator!r}; the last good checkpoint (step "
          f"{ckpt.latest_step()}) in {workdir}/checkpoints is kept. Try a "
          "lower learning_rate or another estimator.")
    step += n
    elapsed = time.perf_counter() - tic
    row = {"step": step, "train_elbo": float(np.mean(metrics["elbo"])),
           **({f"train_iw{config.num_samples}": float(np.mean(
               metrics["iw_bound"]))} if "iw_bound" in metrics else {}),
           "estimator_loss": float(np.mean(metrics["estimator_loss"])),
           "steps_per_sec": n / elapsed}
    row.update(_estimator_summary(exp.spec, state.estimator))
    tic = time.perf_counter()
    if step % config.eval_every == 0 or step == config.num_steps:
      for split in ("valid", "test"):
        row.update(evaluate(exp, state.params, config, split))
      if config.diagnostic_draws > 1:
        row.update({name: float(v) for name, v in diagnose(
            state.params, state.estimator, x_diag, x_many,
            jax.random.key(config.eval_seed)).items()})
      tic = time.perf_counter()
    metric_writer.write(row)
    bar.update(n)
    bar.set_postfix(elbo=f"{row['train_elbo']:.2f}")
    if step % config.checkpoint_every == 0 or step == end:
      ckpt.save(step, state)
  bar.close()
  ckpt.wait()

  final = {"step": int(state.step)}
  if int(state.step) >= config.num_steps:
    final["train_elbo_last_1000_steps"] = _recent_train_elbo(
        metric_writer.rows(), 1000)
    rows = metric_writer.rows()
    evaluated = {key: v for key, v in (rows[-1] if rows else {}).items()
                 if key.startswith(("valid_", "test_"))}
    if rows and rows[-1]["step"] == int(state.step) and evaluated:
      final.update(evaluated)  # the loop's last row evaluated these params
    else:
      for split in ("valid", "test"):
        final.update(evaluate(exp, state.params, config, split))
    with open(os.path.join(workdir, "final_metrics.json"), "w") as fh:
      json.dump(final, fh, indent=2)
    plots.plot_curves(metric_writer.rows(), os.path.join(workdir,
                                                         "curves.png"))
  metric_writer.close()
  return final


def _recent_train_elbo(rows, num_steps: int) -> Optional[float]:
  """Step-weighted mean training ELBO over (about) the last `num_steps`."""
  rows = [r for r in rows if "train_elbo" in r]
  if not rows:
    return None
  last = rows[-1]["step"]
  recent = [r for r in rows if r["step"] > last - num_steps] or rows[-1:]
  return float(np.mean([r["train_elbo"] for r in recent]))


def _estimator_summary(spec, est_state) -> dict[str, float]:
  """The tuned scalars worth watching (REBAR's eta and lambda)."""
  if spec.name == "rebar":
    p = jax.device_get(est_state.params)
    return {"eta": float(p.eta),
            "temperature": float(np.exp(p.log_temperature))}
  if spec.name == "relax":
    p = jax.device_get(est_state.params)
    return {"temperature": float(np.mean([np.exp(q.log_temperature)
                                          for q in p]))}
  return {}


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration file.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (resumed if it holds a checkpoint); "
    "defaults to runs/<config name>-<estimator>.")


def default_workdir(config_path: str, config: ml_collections.ConfigDict
                    ) -> str:
  """runs/<config file name>-<estimator>, relative to the current directory."""
  name = os.path.splitext(os.path.basename(config_path))[0]
  return os.path.join("runs", f"{name}-{config.estimator}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # orbax logs every checkpoint step at INFO; keep the console to the bar.
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. "
                         "--config=configs/sbn_mnist.py")
  workdir = _WORKDIR.value or default_workdir(
      config_flags.get_config_filename(flags.FLAGS["config"]), config)
  final = train_and_evaluate(config, workdir)
  lines = [f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}"
           for k, v in final.items()]
  print("Final metrics (" + workdir + "):\n  " + "\n  ".join(lines))


if __name__ == "__main__":
  app.run(main)

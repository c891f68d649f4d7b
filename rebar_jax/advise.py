r"""Which estimator for this model? Every one that applies, measured on it.

    python -m rebar_jax.advise --config=configs/sbn_linear.py
    python -m rebar_jax.advise --config=configs/sbn_mnist.py \
        --config.model=examples/custom_model.py:make --checkpoint=runs/mine

At the model's parameters (its initialisation from config.seed, or the
latest checkpoint of the run in --checkpoint) and on the training batches the
run draws next, every estimator that applies to the model's latent families
(`candidates`, from `registry`) is

  1. tuned: a stateful estimator's own parameters (REBAR's eta and lambda,
     RELAX's network, NVIL's baseline, RODEO's and double_cv's scales) are
     trained for --tune_steps steps with the model held fixed;
  2. drawn: --num_draws independent encoder gradients on each of
     --num_batches batches, each from the training step itself (its model
     update discarded), NVIL and MuProp-with-baseline without their variance
     normalisation (`protocol.unit_scale`, a step size, not a variance
     reduction);
  3. timed: its training step in alternation with the reference's
     (REINFORCE; `rebar_jax.utils.timing.interleaved`).

Reported for each (`Advice.rows`):
  variance   per-parameter variance of the encoder gradient, averaged over
             the parameters and batches (`diagnostics.gradient_statistics`'
             log-variance, exponentiated), in total and per encoder module,
             with a 95% bootstrap interval over the draws;
  s/step     seconds per training step: its cost in reference steps (median
             of the per-pair ratios; interval: their range) times the
             reference's median seconds per step;
  work       variance x seconds per step: at equal wall-clock time, an
             estimator k times faster averages k times more steps, so this
             decides how fast training progresses. The ranking key;
  f evals    evaluations of the learning signal f per data point and layer
             in one step (counted in the traced program, `f_evaluations`);
             variance x evals is the variance at an equal number of them;
  bias       for an estimator not unbiased: the squared distance of its mean
             from the mean of the lowest-variance unbiased one, per
             parameter, less what the noise of the paired differences'
             mean alone gives (both from the same keys), with its 95%
             interval; and that distance over the gradient's size;
  exact      (--bias_check; automatic for models of at most --max_states
             joint latent states) each estimator's mean against the exact
             gradient of the enumerated ELBO (`testing.exact_elbo`): the
             largest z-score over the coordinates against the Student-t
             threshold of a 0.1% test, Bonferroni-corrected for their number.

The ranking (`rank`, a pure function of these rows) orders the unbiased
estimators that pass the exact check by work; an estimator whose interval
overlaps the interval of its group's best is a tie, and within a tie the
cheaper step comes first. The recommendation (`recommend`) is the first row,
with its reason; a biased estimator is never recommended, and one with less
work than the recommendation is named beside it with its bias. Writes
advice.md, advice.csv, advice.json and advice.png to --output_dir.

Compiling dominates the cost on a CPU (one program per estimator, compiled
two at a time while the previous ones are measured): set
JAX_COMPILATION_CACHE_DIR to keep the programs for the next advice.
"""
import concurrent.futures
import csv
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Callable, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
from scipy import stats as scipy_stats

from rebar_jax import cli
from rebar_jax import diagnostics
from rebar_jax import errors
from rebar_jax import gradients
from rebar_jax import testing
from rebar_jax import train
from rebar_jax.estimators import protocol
from rebar_jax.estimators import registry
from rebar_jax.utils import checkpoints
from rebar_jax.utils import timing

Array = jax.Array
Params = Any

# The reference: every estimator's step is timed against its step, and in a
# model mixing families it estimates the families not being compared.
REFERENCE = "reinforce"
LEVEL = 0.95  # of every interval
EXACT_ALPHA = 1e-3  # the exact check's test size, over all coordinates
QUADRATURE_POINTS = 20  # per Gaussian unit, in the exact check


@dataclasses.dataclass(frozen=True)
class Budget:
  """How much the advisor measures (the command line's flags).

  num_draws: encoder-gradient draws per batch and estimator.
  num_batches: training batches, each with its own draws.
  tune_steps: steps training a stateful estimator's own parameters first.
  timing_repeats: pairs of alternating turns against the reference.
  timing_seconds: the length of one turn.
  bootstrap: resamples of the draws behind each interval.
  bias_check: compare means with the exact gradient: None when the model
    has at most max_states joint latent states, True (refused beyond), False.
  max_states: the largest enumeration of the automatic exact check.
  workers: programs compiled at once, ahead of the measurements.
  seed: of the draws (the model's parameters come from config.seed).
  timing: time each step against the reference's and rank by variance x
    time; False: no timing, cost in f evaluations (`f_evaluations`, relative
    to the reference's) and ranking by variance x evaluations, a function of
    the model's parameters and the seeds alone (training with
    estimator=auto decides so, and an interrupted run decides as an
    uninterrupted one).
  """
  num_draws: int = 16
  num_batches: int = 2
  tune_steps: int = 50
  timing_repeats: int = 5
  timing_seconds: float = 0.05
  bootstrap: int = 400
  bias_check: Optional[bool] = None
  max_states: int = 4096
  workers: int = 2
  seed: int = 0
  timing: bool = True


# ----------------------------------------------------------------------------
# Which estimators apply, and which are unbiased.
# ----------------------------------------------------------------------------


def canonical(name: str, families: Sequence[str]) -> str:
  """`name` as written for a model of these families: itself for one
  family, "family:name" pairs in the families' order for several."""
  families = tuple(dict.fromkeys(families))
  if len(families) == 1:
    return name
  pairs = registry.names_by_family(name, families)
  return ",".join(f"{f}:{pairs[f]}" for f in families)


def candidates(families: Sequence[str], reference: str = REFERENCE,
               auto: bool = False) -> list[str]:
  """Every registered training estimator for a model of these families.

  One family: each layer estimator registered for it. Several: each name
  of each family with the reference's estimator for the other families
  ("categorical:reinforce,bernoulli:disarm"), then the names registered for
  every family, used for all of them ("rebar"). auto: only the registry's
  estimator=auto defaults (`registry.Entry.auto`) as the names varied.
  """
  families = tuple(dict.fromkeys(families))
  if len(families) == 1:
    return list(_layer_names(families[0], auto))
  fixed = registry.names_by_family(reference, families)
  names = [",".join(f"{g}:{name if g == f else fixed[g]}" for g in families)
           for f in families for name in _layer_names(f, auto)]
  shared = [n for n in _layer_names(families[0], auto)
            if all(n in _layer_names(f, auto) for f in families)
            and canonical(n, families) not in names]
  return list(dict.fromkeys(names + shared))


def group_names(tokens: Sequence[str]) -> list[str]:
  """Estimator names from a comma-split list (the --estimators flag).

  A plain name stands alone; consecutive "family:name" pairs form one
  mixed-model estimator until a family repeats, which starts the next:
  ["categorical:reinforce", "bernoulli:disarm", "categorical:indecater",
  "bernoulli:reinforce"] -> ["categorical:reinforce,bernoulli:disarm",
  "categorical:indecater,bernoulli:reinforce"].
  """
  names: list[str] = []
  group: list[str] = []
  for token in (t.strip() for t in tokens if t.strip()):
    family = token.split(":")[0] if ":" in token else None
    if group and (family is None
                  or family in (g.split(":")[0] for g in group)):
      names.append(",".join(group))
      group = []
    if family is None:
      names.append(token)
    else:
      group.append(token)
  if group:
    names.append(",".join(group))
  return names


def is_unbiased(name: str, families: Sequence[str]) -> bool:
  """Whether `name` is unbiased for the ELBO's gradient on these families.

  Each family's estimator is registered unbiased (`registry.Entry
  .unbiased_for`); those with `registry.RESCALED` (NVIL, MuProp with its
  baseline) are unbiased up to a positive scale, measured at unit scale.
  """
  return all(registry.get(n).unbiased_for is not None
             for n in registry.names_by_family(name, families).values())


def _layer_names(family: str, auto: bool = False) -> tuple[str, ...]:
  return registry.names(family=family, kind=registry.LAYER,
                        auto=True if auto else None)


# ----------------------------------------------------------------------------
# The measured quantities.
# ----------------------------------------------------------------------------


def encoder_modules(params: Params) -> list[tuple[str, int]]:
  """(name, size) of each encoder module, in `diagnostics.encoder_leaves`'
  order: a leaf belongs to the first key of its path naming an encoder."""
  out: dict[str, int] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [str(getattr(p, "key", "")) for p in path]
    owner = next((k for k in keys if "encoder" in k), None)
    if owner is not None:
      out[owner] = out.get(owner, 0) + int(np.size(leaf))
  return list(out.items())


def make_step(exp: train.Experiment) -> jax.stages.Wrapped:
  """jit((state, x, key) -> (state, encoder gradient)): one training step.

  The step is training's (`train.update`, which `train.make_train_chunk`
  scans): the model's gradients and both optax updates; its key is
  fold_in(key, state.step).
  The second output is the model's encoder gradient (of -ELBO),
  flattened (`diagnostics.encoder_leaves`).
  """
  def step(state: train.TrainState, x: Array, key: Array):
    state, grads, _ = train.update(exp, state, x,
                                   jax.random.fold_in(key, state.step))
    return state, diagnostics.encoder_leaves(grads)

  return jax.jit(step)


def tune(step, state: train.TrainState, batches: Sequence[Array],
         steps: int, key: Array) -> train.TrainState:
  """The estimator's own parameters trained `steps` steps, the model fixed.

  Each training step's estimator update is kept and its model update
  discarded (as scripts/variance.py's --tune_steps), cycling over `batches`.
  """
  for i in range(steps):
    new, _ = step(state._replace(step=state.step + i),
                  batches[i % len(batches)], key)
    state = state._replace(estimator=new.estimator,
                           estimator_opt_state=new.estimator_opt_state)
  return state


def draws(step, state: train.TrainState, x: Array, key: Array,
          num: int) -> np.ndarray:
  """(num, P) independent encoder gradients at `state` on batch x."""
  return np.stack([np.asarray(step(state, x, k)[1])
                   for k in jax.random.split(key, num)])


def _count_callbacks(jaxpr) -> float:
  """debug_callback equations of a jaxpr, each counted as often as it runs
  (a scan's body `length` times, a cond's costliest branch; nan inside a
  while loop, whose trip count is unknown)."""
  count = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "debug_callback":
      count += 1
    inner = [_count_callbacks(j) for j in jax_core.jaxprs_in_params(
        eqn.params)]
    if not inner:
      continue
    if eqn.primitive.name == "scan":
      count += eqn.params["length"] * sum(inner)
    elif eqn.primitive.name == "cond":
      count += max(inner)
    elif eqn.primitive.name == "while":
      count += math.nan if any(inner) else 0.0
    else:
      count += sum(inner)
  return count


def f_evaluations(exp: train.Experiment, params: Params, x: Array) -> float:
  """Evaluations of the learning signal f per data point and layer, one step.

  Counted in the traced estimate for one data point: every call of a
  layer's f (hard or relaxed) is marked with a callback taking its sample,
  so each evaluation vmapped over samples (IndeCateR's D + 1) is one mark
  (`_count_callbacks`); the count is averaged over layers. The chain's own
  F(b) is one evaluation, so REINFORCE and NVIL, which reuse it, count 1; a
  gradient through f is not counted. A relaxed objective (Concrete) is one
  relaxed evaluation.
  """
  estimator = exp.spec.estimator
  if estimator.relaxed_objective:
    return 1.0
  state = exp.spec.init(jax.random.key(0), exp.model)

  def counted(f):
    def f_counted(b, *rest):
      jax.debug.callback(lambda *_: None, b)
      return f(b, *rest)
    return f_counted

  def estimate(params, x, key):
    problem = gradients.estimation_problem(exp.model, params, x, key)
    layers = [layer._replace(f_hard=counted(layer.f_hard),
                             f_soft=counted(layer.f_soft))
              for layer in problem.layers]
    return estimator.estimate(state, problem._replace(
        layers=layers, signal=jnp.zeros(x.shape[:1]))).grads

  jaxpr = jax.make_jaxpr(estimate)(params, x[:1], jax.random.key(0))
  per_layer = _count_callbacks(jaxpr.jaxpr) / len(
      exp.model.stochastic_layers())
  return max(1.0, per_layer)


def joint_states(model) -> float:
  """The joint latent states of `testing.exact_elbo`'s sum (a Gaussian layer
  of H units: QUADRATURE_POINTS^H quadrature nodes)."""
  total = 1.0
  for layer in model.stochastic_layers():
    size = int(np.prod(layer.event_shape))
    if layer.family == "bernoulli":
      total *= 2.0**size
    elif layer.family == "categorical":
      total *= float(layer.event_shape[-1])**(size // layer.event_shape[-1])
    else:
      total *= float(QUADRATURE_POINTS)**size
  return total


def exact_encoder_gradient(model, params: Params, x: Array) -> np.ndarray:
  """The encoder gradient of -mean ELBO on x, every latent state summed."""
  grad = jax.jit(jax.grad(lambda p: -jnp.mean(testing.exact_elbo(
      model, p, x, QUADRATURE_POINTS))))(params)
  return np.asarray(diagnostics.encoder_leaves(grad))


def exact_check(batch_draws: Sequence[np.ndarray],
                exact: Sequence[np.ndarray]) -> dict[str, float]:
  """The draws' means against the exact gradients (one per batch).

  Returns the largest z-score (`testing.z_scores`) over coordinates and
  batches and the threshold it must not exceed: the Student-t quantile
  (n - 1 degrees of freedom) of a two-sided test of size EXACT_ALPHA,
  Bonferroni-corrected for the coordinates that vary.
  """
  z = np.concatenate([testing.z_scores(d, e).ravel()
                      for d, e in zip(batch_draws, exact)])
  varying = max(1, int(np.sum(np.concatenate(
      [np.std(d, 0).ravel() > 0 for d in batch_draws]))))
  n = batch_draws[0].shape[0]
  threshold = float(scipy_stats.t.isf(EXACT_ALPHA / (2 * varying), n - 1))
  return {"exact_max_z": float(np.max(z)), "exact_threshold": threshold,
          "exact_pass": bool(np.max(z) <= threshold)}


# ----------------------------------------------------------------------------
# Intervals: bootstrap over the draws, in the space of their Gram matrices.
# ----------------------------------------------------------------------------


def _resamples(rng: np.random.Generator, num: int, n: int) -> np.ndarray:
  """(num + 1, n) counts of each draw: the sample itself, then resamples."""
  counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n)
                     for _ in range(num)]) if num else np.zeros((0, n))
  return np.concatenate([np.ones((1, n)), counts]).astype(np.float64)


def _gram(a: np.ndarray) -> np.ndarray:
  """a a' of an (n, P) array, n small: numpy's einsum, not BLAS, whose
  threads spin for seconds on a loaded machine (10 s instead of 0.2 s for
  the bias of 2 x 16 draws of 157,000 parameters on this project's 2 busy
  cores)."""
  return np.einsum("ip,jp->ij", a, a)


def _variances(centred: np.ndarray, counts: np.ndarray,
               gram: Optional[np.ndarray] = None) -> np.ndarray:
  """Per-parameter variance of each resample (rows of counts), (R,).

  centred: (n, P) draws minus their mean (gram: their Gram matrix, if
  known). A resample with counts w has mean
  m + w'C / n and variance (sum_i w_i |c_i|^2 - n |w'C / n|^2) / ((n - 1) P).
  """
  n, size = centred.shape
  gram = _gram(centred) if gram is None else gram
  quad = np.einsum("rn,nm,rm->r", counts, gram, counts) / n**2
  return (counts @ np.diag(gram) - n * quad) / ((n - 1) * size)


def _interval(point: float, replicates: np.ndarray, truth: float,
              log: bool = False) -> tuple[float, float]:
  """The basic (pivotal) bootstrap interval of a statistic.

  `replicates` are the statistic on resamples and `truth` its value in the
  bootstrap's world (the plug-in value of the sample, e.g. its variance
  with divisor n): the quantiles of replicate - truth (of log(replicate /
  truth) with `log`) stand in for those of point - true value.
  """
  if not len(replicates):
    return math.nan, math.nan
  tail = 100 * (1 - LEVEL) / 2
  if log:
    with np.errstate(divide="ignore", invalid="ignore"):
      pivot = np.log(np.maximum(replicates, 1e-300) / truth)
    lo, hi = np.percentile(pivot, [tail, 100 - tail])
    return float(point * np.exp(-hi)), float(point * np.exp(-lo))
  lo, hi = np.percentile(replicates - truth, [tail, 100 - tail])
  return float(point - hi), float(point - lo)


def variance_statistics(batch_draws: Sequence[np.ndarray],
                        modules: Sequence[tuple[str, int]], rng,
                        bootstrap: int) -> dict[str, Any]:
  """Variance (mean over parameters and batches), total and per module,
  each with its bootstrap interval (the same resamples for all)."""
  n = batch_draws[0].shape[0]
  counts = [_resamples(rng, bootstrap, n) for _ in batch_draws]
  bounds = np.cumsum([0] + [size for _, size in modules])
  out = {}
  parts = [("total", 0, bounds[-1])] + [
      (name, bounds[i], bounds[i + 1]) for i, (name, _) in enumerate(modules)]
  for name, lo, hi in parts:
    per_batch = []
    for d, c in zip(batch_draws, counts):
      block = np.asarray(d[:, lo:hi], np.float64)
      per_batch.append(_variances(block - block.mean(0), c))
    v = np.mean(per_batch, axis=0)  # (R + 1,)
    # In the bootstrap's world the variance is the sample's with divisor n.
    out[name] = (float(v[0]),) + _interval(v[0], v[1:], v[0] * (n - 1) / n,
                                           log=True)
  return out


def bias_statistics(batch_draws: Sequence[np.ndarray],
                    reference: Sequence[np.ndarray], rng,
                    bootstrap: int) -> dict[str, float]:
  """Squared bias per parameter of one estimator against a reference's mean.

  The draws are paired: draw i of both estimators comes from the same key
  (`_measure`), so the pairs (d_i, r_i) are independent across i but d_i and
  r_i are not (they share the chain's samples). Per batch, with the paired
  differences D_i = d_i - r_i (n, P),

      |mean D|^2 / P - v_D / n,    v_D = per-parameter variance of D,

  whose expectation is the squared bias |E d - E r|^2 / P whatever the
  correlation of d_i and r_i (subtracting v_d / n + v_r / n instead, as for
  independent sets, over-corrects positively correlated draws and can give
  an interval entirely below 0). Averaged over batches, with a bootstrap
  interval resampling the pairs; and relative_bias, sqrt of that over the
  root mean square of the reference's mean (corrected the same way).
  """
  totals, truths, signal = [], [], []
  for d, r in zip(batch_draws, reference):
    d, r = np.asarray(d, np.float64), np.asarray(r, np.float64)
    if d.shape != r.shape:
      raise ValueError(f"bias_statistics: paired draws of one shape, got "
                       f"{d.shape} and {r.shape}")
    n, size = d.shape
    w = _resamples(rng, bootstrap, n)
    diff = d - r
    delta = diff.mean(0)
    centred = diff - delta
    gram = _gram(centred)
    # |delta + w'C/n|^2 for each resample w, in the Gram matrix of C.
    dist = (delta @ delta + 2 * (w @ (centred @ delta)) / n
            + np.einsum("rn,nm,rm->r", w, gram, w) / n**2)
    totals.append(dist / size - _variances(centred, w, gram) / n)
    truths.append(delta @ delta / size)  # the bootstrap world's squared bias
    mean_r = r.mean(0)
    v_r = float(np.mean(np.var(r, axis=0, ddof=1)))
    signal.append(mean_r @ mean_r / size - v_r / n)
  bias2 = np.mean(totals, axis=0)
  lo, hi = _interval(bias2[0], bias2[1:], float(np.mean(truths)))
  size_of_grad = max(float(np.mean(signal)), 1e-30)
  return {"bias2": float(bias2[0]), "bias2_lo": lo, "bias2_hi": hi,
          "relative_bias": math.sqrt(max(float(bias2[0]), 0.0) / size_of_grad),
          "relative_bias_hi": math.sqrt(max(hi, 0.0) / size_of_grad)}


# ----------------------------------------------------------------------------
# Ranking: a pure function of the measurements.
# ----------------------------------------------------------------------------


def _overlap(a: dict, b: dict) -> bool:
  return a["work_lo"] <= b["work_hi"] and b["work_lo"] <= a["work_hi"]


def rank(rows: Sequence[dict]) -> list[dict]:
  """The rows ordered for the table, each given `rank` and `tied_with`.

  A row takes part when it is unbiased (`unbiased`), did not fail the
  exact check (`exact_pass` False) and its work is finite. Those are sorted
  by `work`; the best starts a group and every later row whose interval
  [work_lo, work_hi] overlaps the interval of its group's best joins the
  group (a tie), else starts the next; a group's rows share its rank and are
  ordered by `seconds` (the cheaper step first). The other rows follow by
  work, rank None. Returns new dicts: rank, tied_with (the other names of the
  group).
  """
  eligible = [r for r in rows
              if r["unbiased"] and r.get("exact_pass") is not False
              and math.isfinite(r["work"])]
  groups: list[list[dict]] = []
  for r in sorted(eligible, key=lambda r: r["work"]):
    if groups and _overlap(groups[-1][0], r):
      groups[-1].append(r)
    else:
      groups.append([r])
  out = []
  for i, group in enumerate(groups, 1):
    for r in sorted(group, key=lambda r: r["seconds"]):
      out.append(dict(r, rank=i, tied_with=[q["name"] for q in group
                                             if q is not r]))
  rest = [r for r in rows if not any(r is q for q in eligible)]
  out += [dict(r, rank=None, tied_with=[]) for r in sorted(
      rest, key=lambda r: (not math.isfinite(r["work"]), r["work"]))]
  return out


def _g(x: Optional[float]) -> str:
  return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else (
      f"{x:.3g}")


def recommend(ranked: Sequence[dict], work: str = "variance x time"
              ) -> tuple[Optional[str], str]:
  """(name, one line with its reason) from `rank`'s rows; name None if no
  unbiased estimator passed. `work`: what the rows' work is."""
  first = [r for r in ranked if r["rank"] == 1]
  if not first:
    return None, ("no recommendation: no unbiased estimator was measured "
                  "(or none passed the exact check).")
  best = first[0]
  span = f"{_g(best['work'])} [{_g(best['work_lo'])}, {_g(best['work_hi'])}]"
  if best["tied_with"]:
    cheapest = (f"{1e3 * best['seconds']:.3g} ms" if work.endswith("time")
                else f"{_g(best['evals'])} f evaluations")
    reason = (f"tie on {work} with {', '.join(best['tied_with'])} "
              f"(95% intervals overlap; {span}), and the cheapest step of "
              f"them ({cheapest})")
  else:
    after = sorted((r for r in ranked if r["rank"] == 2),
                   key=lambda r: r["work"])
    reason = f"lowest {work}, {span}"
    if after:
      reason += (f", {after[0]['work'] / best['work']:.3g}x below the next "
                 f"({after[0]['name']})")
  if best.get("exact_pass") is not None:
    reason += "; its mean matches the exact gradient"
  faster = [r for r in ranked if r["rank"] is None
            and r["work"] < best["work"]]
  for r in faster[:1]:
    how = (" (it fails the exact check)" if r.get("exact_pass") is False
           else " by construction")
    reason += f". {r['name']} has less {work} but is biased{how}"
    if "bias2" in r:
      resolved = r["bias2_lo"] > 0
      reason += (f"; {'its' if resolved else 'these draws do not resolve its'}"
                 f" squared bias per parameter: {_g(r['bias2'])} (95% "
                 f"[{_g(r['bias2_lo'])}, {_g(r['bias2_hi'])}]), up to "
                 f"{_g(r['relative_bias_hi'])} of the gradient's size")
  return best["name"], f"{best['name']}: {reason}."


# ----------------------------------------------------------------------------
# The advice.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Advice:
  """rows: `rank`'s rows; recommendation: a name or None; reason: one line;
  skipped: (name, why) of candidates that could not be built; notes: lines
  said with the table; modules: the encoder modules' names."""
  rows: list[dict]
  recommendation: Optional[str]
  reason: str
  skipped: list[tuple[str, str]]
  notes: list[str]
  modules: list[str]


def _copy(config: ml_collections.ConfigDict, **fields: Any
          ) -> ml_collections.ConfigDict:
  c = config.copy_and_resolve_references()
  for k, v in fields.items():
    c[k] = v
  return c


def restore_params(config: ml_collections.ConfigDict, workdir: str,
                   dataset=None) -> tuple[Params, int]:
  """(params, step) of the latest checkpoint of the run in `workdir`.

  The checkpoint's state is shaped by the run's estimator, read from its
  config.json; the model is the one `config` builds.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: --checkpoint takes the "
                            "workdir of a training run (rebar_jax.train "
                            "--workdir).")
  with open(path) as fh:
    run = json.load(fh)
  c = _copy(config, **{k: run[k] for k in ("estimator", "iw_samples",
                                           "aux_samples", "loo_samples")
                       if k in run})
  like = train.init_state(train.build(c, dataset), c.seed)
  state = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints")
                                   ).restore(like)
  return state.params, int(state.step)


@dataclasses.dataclass
class _Prepared:
  name: str
  exp: Any = None
  step: Any = None
  evals: float = math.nan
  error: str = ""


def advise(config: ml_collections.ConfigDict, params: Optional[Params] = None,
           start_step: int = 0, budget: Budget = Budget(),
           names: Optional[Sequence[str]] = None,
           reference: str = REFERENCE,
           log: Callable[[str], None] = print,
           programs: Optional[dict[str, Any]] = None) -> Advice:
  """Measures every applicable estimator on the config's model; ranks them.

  Args:
    config: a training config (`rebar_jax.train`); its estimator is ignored.
    params: the model's parameters (default: its initialisation).
    start_step: the training step of `params`: the batches measured are the
      ones training draws from this step on.
    budget: draws, batches, tuning and timing (`Budget`).
    names: the estimators to compare (default: `candidates`).
    reference: the timing reference, also the estimator of the families not
      compared in a mixed model.
    log: progress lines.
    programs: a dict the caller keeps across calls on one config: the
      dataset, the model and each estimator's compiled step (or why it
      cannot be built) are kept in it and reused, so a later call loads,
      checks and compiles nothing (estimator=auto's decisions after the
      first).
  """
  notes = []
  if config.iw_samples != 1:
    notes.append(f"config.iw_samples={config.iw_samples}: the one-sample "
                 "estimators are compared (iw_samples=1); the K-sample "
                 "objectives are not.")
  config = _copy(config, iw_samples=1, aux_samples=0)
  kept = {} if programs is None else programs
  base_key = f"base ({reference})"  # the data and the model, checked
  if base_key not in kept:
    kept[base_key] = train.build(_copy(config, estimator=reference),
                                 train.load_data(config))
  base = kept[base_key]
  dataset = base.dataset
  families = gradients.layer_families(base.model)
  names = list(names or candidates(families, reference))
  reference = canonical(reference, families)
  state = train.init_state(base, config.seed)
  if params is not None:
    state = state._replace(params=params)
  state = state._replace(step=jnp.asarray(start_step, jnp.int32))
  rows_x = train.batch_indices(config.seed, dataset.train.shape[0],
                               config.batch_size, start_step,
                               budget.num_batches)
  batches = [train.binarized(dataset.train[i], dataset, config.seed + j)
             for j, i in enumerate(rows_x)]
  modules = encoder_modules(state.params)
  root = jax.random.key(budget.seed)

  states = joint_states(base.model)
  check = budget.bias_check
  if check is None:
    check = states <= budget.max_states
  elif check and states > budget.max_states:
    raise ValueError(
        f"--bias_check: the model has {states:.3g} joint latent states, more "
        f"than --max_states={budget.max_states} to enumerate; the exact "
        "gradient is for small models.")
  exact = ([exact_encoder_gradient(base.model, state.params, x)
            for x in batches] if check else None)

  # Unbiased first: the reference mean of the biased ones' bias is then the
  # lowest-variance unbiased estimator's, whose draws are kept.
  order = sorted(names, key=lambda n: not _claimed(n, families))

  def prepare(name: str, compile_step: bool = True) -> _Prepared:
    key = name if compile_step else f"{name} (cost only)"
    if key not in kept:
      kept[key] = _prepare(name, compile_step)
    return kept[key]

  def _prepare(name: str, compile_step: bool) -> _Prepared:
    try:
      exp = train.build(_copy(config, estimator=name), dataset)
    except (errors.ConfigError, ValueError) as e:  # refused for this model
      return _Prepared(name, error=str(e).splitlines()[0])
    try:
      compiled = None
      if compile_step:
        step = make_step(exp)
        est = exp.spec.init(root, exp.model)
        like = state._replace(
            estimator=est,
            estimator_opt_state=exp.estimator_optimizer.init(est.params))
        compiled = step.lower(like, batches[0], root).compile()
      evals = f_evaluations(exp, state.params, batches[0])
    except Exception as e:  # pylint: disable=broad-except
      # One estimator failing on a user's model leaves the others' advice.
      return _Prepared(name, error=f"{type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}")
    return _Prepared(name, exp, compiled, evals)

  t0 = time.perf_counter()
  # Untimed, a reference that is not compared gives its cost in f
  # evaluations only: its step is not compiled.
  ref = prepare(reference, compile_step=budget.timing or reference in {
      canonical(n, families) for n in names})
  if ref.error:
    raise ValueError(f"The reference {reference!r} cannot be built: "
                     f"{ref.error}")
  measured, skipped, best_draws = [], [], None
  with concurrent.futures.ThreadPoolExecutor(budget.workers) as pool:
    for prepared in pool.map(
        lambda n: ref if canonical(n, families) == reference else prepare(n),
        order):
      if prepared.error:
        skipped.append((prepared.name, prepared.error))
        log(f"  {prepared.name}: skipped ({prepared.error})")
        continue
      row, est_state, batch_draws = _measure(prepared, state, batches, root,
                                             budget, modules, families,
                                             exact, best_draws)
      if row["unbiased"] and row.get("exact_pass") is not False and (
          best_draws is None or row["variance"] < best_draws[0]):
        best_draws = (row["variance"], batch_draws, row["name"])
      measured.append((prepared, row, est_state))
      log(f"  {row['name']}: variance {_g(row['variance'])}, "
          f"{_g(row['evals'])} f evaluations "
          f"({time.perf_counter() - t0:.0f} s)")
  for _, row, _ in measured:  # biased ones measured before any unbiased
    if "draws" in row:
      draws_of_row = row.pop("draws")
      if best_draws is not None:
        row.update(_bias_of(best_draws, budget, draws_of_row))

  if budget.timing:
    _time(measured, ref, state, batches, root, budget)
  else:
    ref_evals = ref.evals
    for _, row, _ in measured:
      cost = row["evals"] / ref_evals
      row.update(cost=cost, cost_lo=cost, cost_hi=cost, seconds=cost,
                 seconds_lo=cost, seconds_hi=cost)
  rows = []
  for _, row, _ in measured:
    row.update(work=row["variance"] * row["seconds"],
               work_lo=row["variance_lo"] * row["seconds_lo"],
               work_hi=row["variance_hi"] * row["seconds_hi"],
               variance_x_evals=row["variance"] * row["evals"])
    rows.append(row)
  ranked = rank(rows)
  name, reason = recommend(ranked, "variance x time" if budget.timing
                           else "variance x f evaluations")
  log(f"measured in {time.perf_counter() - t0:.0f} s")
  if not budget.timing:
    notes.append("Not timed: cost is f evaluations per step relative to "
                 f"{reference}'s, and work is variance x that cost.")
  if best_draws is not None:
    notes.append(f"Bias of the biased estimators: against the mean of "
                 f"{best_draws[2]}, the unbiased one of lowest variance.")
  return Advice(ranked, name, reason, skipped, notes,
                [m for m, _ in modules])


def _time(measured, ref: "_Prepared", state, batches, root, budget: Budget
          ) -> None:
  """Each row's step cost in reference steps, timed in alternation with the
  reference after every compile (no compile runs during it), and its
  seconds per step."""
  ref_state = state._replace(
      estimator=ref.exp.spec.init(root, ref.exp.model),
      estimator_opt_state=ref.exp.estimator_optimizer.init(
          ref.exp.spec.init(root, ref.exp.model).params))
  ref_timer = _timer(ref.step, ref_state, batches[0], root)
  ref_rates = []
  for prepared, row, est_state in measured:
    if prepared is ref:
      continue
    m = timing.interleaved(ref_timer,
                           _timer(prepared.step, est_state, batches[0], root),
                           budget.timing_repeats, budget.timing_seconds)
    ref_rates.append(m["a_steps_per_sec"])
    row.update(cost=m["ratio"], cost_lo=m["ratio_min"],
               cost_hi=m["ratio_max"])
  seconds = 1.0 / float(np.median(ref_rates)) if ref_rates else _alone(
      ref_timer, budget)
  for prepared, row, _ in measured:
    if prepared is ref:
      row.update(cost=1.0, cost_lo=1.0, cost_hi=1.0)
    row.update(seconds=row["cost"] * seconds,
               seconds_lo=row["cost_lo"] * seconds,
               seconds_hi=row["cost_hi"] * seconds)


def _claimed(name: str, families) -> bool:
  try:
    return is_unbiased(name, families)
  except (ValueError, KeyError):
    return False


def _measure(prepared: _Prepared, state, batches, root, budget: Budget,
             modules, families, exact, best_draws):
  """Tunes, draws and summarises one estimator (no timing)."""
  exp, step = prepared.exp, prepared.step
  est = exp.spec.init(root, exp.model)
  state = state._replace(estimator=est,
                         estimator_opt_state=exp.estimator_optimizer.init(
                             est.params))
  if budget.tune_steps and jax.tree.leaves(est.params):
    state = tune(step, state, batches, budget.tune_steps,
                 jax.random.fold_in(root, 1))
  # NVIL's division by the running sd of the signal is a step size, not a
  # variance reduction: the variance is measured at unit scale.
  measured = state._replace(estimator=protocol.unit_scale(state.estimator))
  batch_draws = [draws(step, measured, x, jax.random.fold_in(root, 2 + b),
                       budget.num_draws) for b, x in enumerate(batches)]
  rng = np.random.default_rng(budget.seed)
  stats = variance_statistics(batch_draws, modules, rng, budget.bootstrap)
  row = {"name": prepared.name,
         "unbiased": is_unbiased(prepared.name, families),
         "variance": stats["total"][0], "variance_lo": stats["total"][1],
         "variance_hi": stats["total"][2],
         "modules": {m: stats[m] for m, _ in modules},
         "evals": prepared.evals}
  if exact is not None:
    row.update(exact_check(batch_draws, exact))
  if not row["unbiased"] and best_draws is not None:
    row.update(_bias_of(best_draws, budget, batch_draws))
  elif not row["unbiased"]:
    row["draws"] = batch_draws  # until an unbiased reference is measured
  return row, state, batch_draws


def _bias_of(best_draws, budget: Budget, batch_draws):
  out = bias_statistics(batch_draws, best_draws[1],
                        np.random.default_rng(budget.seed + 1),
                        budget.bootstrap)
  return dict(out, reference_of_bias=best_draws[2])


def _timer(step, state, x, key) -> timing.Timer:
  """steps -> seconds: that many training steps from `state`, carried on."""
  holder = [state]

  def run(steps: int) -> float:
    s = holder[0]
    t = time.perf_counter()
    for _ in range(steps):
      s, _ = step(s, x, key)
    jax.block_until_ready(s)
    holder[0] = s
    return time.perf_counter() - t

  return run


def _alone(timer: timing.Timer, budget: Budget) -> float:
  n = timing.block_steps(timer, 1, budget.timing_seconds)
  return float(np.median([timer(n) / n for _ in range(budget.timing_repeats)]))


# ----------------------------------------------------------------------------
# Outputs.
# ----------------------------------------------------------------------------

COLUMNS = ("rank", "name", "unbiased", "variance", "variance_lo",
           "variance_hi", "seconds", "seconds_lo", "seconds_hi", "cost",
           "work", "work_lo", "work_hi", "evals", "variance_x_evals", "bias2",
           "bias2_lo", "bias2_hi", "relative_bias", "relative_bias_hi",
           "exact_max_z",
           "exact_threshold", "exact_pass")


def _ci(r: dict, key: str, scale: float = 1.0) -> str:
  return (f"{_g(r[key] * scale)} [{_g(r[key + '_lo'] * scale)}, "
          f"{_g(r[key + '_hi'] * scale)}]")


def markdown(advice: Advice, title: str = "") -> str:
  """The ranked table, the per-module table and the recommendation."""
  lines = [f"## {title}" if title else "## Which estimator?", "",
           f"**Recommendation: {advice.reason}**", "",
           "| rank | estimator | unbiased | variance [95%] | ms/step [range] "
           "| x ref | variance x s [95%] | f evals | variance x evals "
           "| bias² [95%] | bias/grad | exact max z (threshold) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
           "| --- |"]
  for r in advice.rows:
    rank_text = "-" if r["rank"] is None else str(r["rank"]) + (
        " (tie)" if r["tied_with"] else "")
    bias = (_ci(r, "bias2") if "bias2" in r else "-")
    exact = (f"{_g(r['exact_max_z'])} ({_g(r['exact_threshold'])})"
             + ("" if r["exact_pass"] else " FAIL")
             if "exact_max_z" in r else "-")
    lines.append(
        f"| {rank_text} | {r['name']} | {'yes' if r['unbiased'] else 'no'} "
        f"| {_ci(r, 'variance')} | {_ci(r, 'seconds', 1e3)} "
        f"| {_g(r['cost'])} | {_ci(r, 'work')} | {_g(r['evals'])} "
        f"| {_g(r['variance_x_evals'])} | {bias} "
        f"| {_g(r.get('relative_bias'))} | {exact} |")
  if len(advice.modules) > 1:
    lines += ["", "Variance per encoder module [95%]:", "",
              "| estimator | " + " | ".join(advice.modules) + " |",
              "| --- |" + " --- |" * len(advice.modules)]
    for r in advice.rows:
      lines.append(f"| {r['name']} | " + " | ".join(
          f"{_g(v)} [{_g(lo)}, {_g(hi)}]"
          for v, lo, hi in (r["modules"][m] for m in advice.modules)) + " |")
  lines += [""] + [f"- {n}" for n in advice.notes]
  lines += [f"- Not measured: {name} ({why})" for name, why in advice.skipped]
  return "\n".join(lines) + "\n"


def write(advice: Advice, output_dir: str, title: str = "",
          with_plot: bool = True) -> dict[str, str]:
  """advice.md, advice.csv, advice.json and (with_plot) advice.png in
  output_dir."""
  os.makedirs(output_dir, exist_ok=True)
  paths = {ext: os.path.join(output_dir, f"advice.{ext}")
           for ext in ("md", "csv", "json") + (("png",) if with_plot else ())}
  with open(paths["md"], "w") as fh:
    fh.write(markdown(advice, title))
  with open(paths["csv"], "w", newline="") as fh:
    writer = csv.writer(fh)
    module_cols = [f"variance_{m}{s}" for m in advice.modules
                   for s in ("", "_lo", "_hi")]
    writer.writerow(list(COLUMNS) + module_cols)
    for r in advice.rows:
      writer.writerow([r.get(c, "") if r.get(c) is not None else ""
                       for c in COLUMNS]
                      + [v for m in advice.modules for v in r["modules"][m]])
  with open(paths["json"], "w") as fh:
    json.dump({"recommendation": advice.recommendation,
               "reason": advice.reason, "notes": advice.notes,
               "skipped": advice.skipped,
               "rows": [{k: v for k, v in r.items() if k != "draws"}
                        for r in advice.rows]}, fh, indent=1, default=float)
  if with_plot:
    plot(advice, paths["png"], title)
  return paths


def plot(advice: Advice, path: str, title: str = "") -> None:
  """Variance x time and variance x evaluations, with 95% intervals."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = advice.rows[::-1]
  y = np.arange(len(rows))
  fig, axes = plt.subplots(1, 2, figsize=(11, 0.35 * len(rows) + 1.5),
                           sharey=True)
  colours = ["tab:blue" if r["rank"] is not None else "tab:gray"
             for r in rows]
  work = np.array([r["work"] for r in rows])
  err = np.array([[max(r["work"] - r["work_lo"], 0) for r in rows],
                  [max(r["work_hi"] - r["work"], 0) for r in rows]])
  axes[0].barh(y, work, xerr=err, color=colours)
  axes[0].set(xscale="log", xlabel="variance x seconds per step (95%)")
  axes[1].barh(y, [r["variance_x_evals"] for r in rows], color=colours)
  axes[1].set(xscale="log", xlabel="variance x f evaluations")
  axes[0].set_yticks(y, [r["name"] + ("" if r["unbiased"] else " (biased)")
                         for r in rows])
  fig.suptitle(title or f"Recommendation: {advice.recommendation}")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ----------------------------------------------------------------------------
# The command.
# ----------------------------------------------------------------------------


def define_flags() -> None:
  """The command's flags (when run as a program)."""
  config_flags.DEFINE_config_file(
      "config", None, "Training configuration file.", lock_config=True)
  flags.DEFINE_string("checkpoint", None, "Workdir of a training run: advise "
                      "at its latest checkpoint's parameters (default: the "
                      "model's initialisation).")
  flags.DEFINE_string("output_dir", None, "Where advice.md/csv/json/png go "
                      "(default: advice/<config name>).")
  flags.DEFINE_list("estimators", [], "Estimators to compare (default: every "
                    "one registered for the model's families); a mixed "
                    "model's are family:name pairs, e.g. categorical:"
                    "reinforce,bernoulli:disarm,categorical:indecater,"
                    "bernoulli:reinforce names two (`group_names`).")
  flags.DEFINE_string("reference", REFERENCE, "The timing reference (and the "
                      "estimator of the other families in a mixed model).")
  defaults = Budget()
  flags.DEFINE_integer("num_draws", defaults.num_draws,
                       "Gradient draws per batch and estimator.")
  flags.DEFINE_integer("num_batches", defaults.num_batches,
                       "Training batches measured.")
  flags.DEFINE_integer("tune_steps", defaults.tune_steps, "Steps training "
                       "a stateful estimator's own parameters first.")
  flags.DEFINE_integer("timing_repeats", defaults.timing_repeats,
                       "Alternating pairs of turns against the reference.")
  flags.DEFINE_float("timing_seconds", defaults.timing_seconds,
                     "Seconds of one timing turn.")
  flags.DEFINE_integer("bootstrap", defaults.bootstrap,
                       "Bootstrap resamples of each interval.")
  flags.DEFINE_bool("bias_check", None, "Check every estimator's mean "
                    "against the exact gradient (default: when the model has "
                    "at most --max_states joint latent states).")
  flags.DEFINE_integer("max_states", defaults.max_states,
                       "Largest enumeration of the automatic bias check.")
  flags.DEFINE_integer("workers", defaults.workers,
                       "Programs compiled at once.")
  flags.DEFINE_integer("seed", defaults.seed, "Seed of the draws.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  config = f.config
  if config is None:
    raise app.UsageError("--config is required, e.g. "
                         "--config=configs/sbn_linear.py")
  config_path = config_flags.get_config_filename(f["config"])
  name = os.path.splitext(os.path.basename(config_path))[0]
  output_dir = f.output_dir or os.path.join("advice", name)
  budget = Budget(num_draws=f.num_draws, num_batches=f.num_batches,
                  tune_steps=f.tune_steps, timing_repeats=f.timing_repeats,
                  timing_seconds=f.timing_seconds, bootstrap=f.bootstrap,
                  bias_check=f.bias_check, max_states=f.max_states,
                  workers=f.workers, seed=f.seed)
  t0 = time.perf_counter()
  try:
    params, step = None, 0
    if f.checkpoint:
      params, step = restore_params(config, f.checkpoint)
    where = f"step {step} of {f.checkpoint}" if f.checkpoint else (
        "initialisation")
    print(f"Advising on {config_path} at {where}.")
    advice = advise(config, params, step, budget,
                    group_names(f.estimators) or None,
                    f.reference)
  except cli.USER_ERRORS + (ValueError,) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  title = f"{name} at {where}"
  paths = write(advice, output_dir, title)
  print(markdown(advice, title))
  print(f"Recommendation: {advice.reason}")
  print(f"Wrote {', '.join(paths.values())} ({time.perf_counter() - t0:.0f} s"
        " in all).")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)

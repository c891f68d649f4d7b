"""Numerical precision: a large offset in f, extreme logit gaps, half precision.

Three proofs, each against the exact gradient (enumeration in float64,
`estimators.exact`, or the Gaussian closed form of tests/test_gaussian.py):

* Offset: d/dl E[f + c] = d/dl E[f], and every unbiased estimator must keep
  it in float32 with c = 1e4 (a VAE's learning signal of hundreds or
  thousands of nats): the Monte Carlo mean of f + 1e4 is tested against the
  exact gradient of f, z <= 4.5, for every unbiased Bernoulli, categorical
  and Gaussian estimator, and through a model (log p + 1e4) for those
  without a one-layer function (NVIL, MuProp with a baseline). The textbook
  IndeCateR (p F - p (p . F)) and the unordered set estimator (probability
  ratios times f) failed it before they were centred
  (`categorical.indecater`, `unordered_set.unordered_set`).
* Exactness at extreme gaps: the unordered set estimator at k = C and
  IndeCateR with one variable sum over every class, so every draw is the
  exact gradient; it must stay so, to float32 precision, for logit gaps up to
  20 and with the offset (the log set probability once cancelled in
  1 - p(A)).
* Half precision: every registered estimator, given float16 or bfloat16
  logits, computes in float32 and returns the logits' dtype
  (`_checks.float32_inside`); the unbiased ones keep their mean.

Compiles are grouped: the categorical offset draws reuse tests/
test_categorical.py's compiled draws (the offset is the traced theta["const"]
of its f family); every other group is one jitted program for all the
estimators of a family (and both half dtypes).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rebar_jax import estimators
from rebar_jax import gradients
from rebar_jax import testing
from rebar_jax.estimators import carms
from rebar_jax.estimators import categorical
from rebar_jax.estimators import exact
from rebar_jax.estimators import gaussian
from rebar_jax.estimators import registry
from rebar_jax.estimators import unordered_set
from rebar_jax.models import protocol
from rebar_jax.models import sbn

import test_bernoulli
import test_categorical
import test_gaussian
import test_gradients

OFFSET = 1e4
HALF = (jnp.float16, jnp.bfloat16)

# ----------------------------------------------------------------------------
# Shared: every variant of a family's estimators, drawn in one program.
# ----------------------------------------------------------------------------

# The Bernoulli variants of tests/test_bernoulli.py (defaults and options),
# every unbiased estimator at least once.
BERNOULLI_UNBIASED = {**test_bernoulli.UNBIASED_VARIANTS,
                      **test_bernoulli.FRONTIER_VARIANTS}
# Every registered estimator with its defaults, plus the options that once
# failed in half precision (the Gaussian copula's ndtri, CARMS at K = 4).
BERNOULLI_ALL = {**{name: (est, {}) for name, est in estimators.BERNOULLI.items()},
                 "arms_gaussian_4": (estimators.arms, {"num_samples": 4,
                                                       "copula": "gaussian"})}
CATEGORICAL_ALL = {**{name: (est, {}) for name, est in
                      estimators.CATEGORICAL.items()},
                   "carms_4": (carms.carms, {"num_samples": 4})}
GAUSSIAN_ALL = {"reinforce": (gaussian.reinforce, {}),
                "reinforce_loo_3": (gaussian.reinforce_loo, {"num_samples": 3}),
                "pathwise": (gaussian.pathwise, {})}


def _unbiased(family: str, variant: str, est) -> bool:
  names = {"bernoulli": estimators.UNBIASED,
           "categorical": estimators.UNBIASED_CATEGORICAL,
           "gaussian": estimators.UNBIASED_GAUSSIAN}[family]
  registry = {"bernoulli": estimators.BERNOULLI,
              "categorical": estimators.CATEGORICAL,
              "gaussian": estimators.GAUSSIAN}[family]
  return any(registry[name] is est for name in names)


def _draw_all(variants, f, keys, logits_list):
  """{variant: [draws (n, *shape) per logits]}, traced into one program.

  Every estimator of `variants` on every logits of `logits_list` (same shape,
  possibly different dtypes), vmapped over keys.
  """
  out = {}
  for variant, (est, options) in variants.items():
    one = lambda k, l, est=est, options=options: est(k, l, f, **options)
    out[variant] = [jax.vmap(one, in_axes=(0, None))(keys, l)
                    for l in logits_list]
  return out


def _half_tolerance(samples: np.ndarray, dtype) -> np.ndarray:
  """The largest mean shift that rounding each draw to `dtype` can cause.

  Round to nearest moves a draw g by at most u |g| (u = eps / 2, the unit
  roundoff) plus half the smallest subnormal, so the mean by at most
  u mean|g| + that, per coordinate: a bound, not an estimate.
  """
  info = jnp.finfo(dtype)
  return (float(info.eps) / 2 * np.abs(samples).mean(0)
          + float(info.smallest_subnormal) / 2)


def _assert_unbiased_rounded(samples, target, dtype, name, max_z=4.5):
  """assert_unbiased, allowing the shift of rounding each draw to `dtype`."""
  samples = np.asarray(samples, np.float64)
  target = np.asarray(target, np.float64)
  mean = samples.mean(0)
  se = samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
  excess = np.abs(mean - target) - _half_tolerance(samples, dtype)
  z = np.where(excess <= 0, 0.0, excess / np.where(se > 0, se, np.inf))
  z = np.where((excess > 0) & (se == 0), np.inf, z)
  assert np.max(z) <= max_z, (
      f"{name}: max z-score {np.max(z):.2f} > {max_z} beyond the {dtype} "
      f"rounding allowance (n={samples.shape[0]})\n  MC mean: {mean.ravel()}"
      f"\n  exact:   {target.ravel()}\n  z: {z.ravel()}")


# ----------------------------------------------------------------------------
# 1. A large offset in f.
# ----------------------------------------------------------------------------


def _categorical_offset_draws(name, problem, **options):
  logits, theta, _ = test_categorical._problem(*problem)
  offset = dict(theta, const=jnp.float32(OFFSET))
  samples = test_categorical._draws(name, logits, offset, **options)
  return samples, test_categorical._exact_gradient(logits, theta)


@pytest.mark.parametrize("name", test_categorical.UNBIASED)
def test_categorical_mean_with_a_large_offset_in_f(name):
  # The same compiled draws as test_categorical's (const is traced).
  samples, target = _categorical_offset_draws(
      name, test_categorical.PROBLEMS[0])
  testing.assert_unbiased(samples, target, name=f"{name}, f + {OFFSET:g}")


# A dominant class next to rare ones (|l| up to 8 in rows offset by +-3,
# C = 3, D = 3): where the uncentred IndeCateR and the unordered set
# estimator's cancellation in 1 - p(A) were biased by the offset.
RARE_CLASSES = (3, (3, 3), "square", 5.0, 3.0)


@pytest.mark.parametrize("name,options", [
    ("indecater", {}), ("unordered_set", {}),
    ("unordered_set", {"num_samples": 3})])
def test_centred_estimators_with_a_large_offset_and_rare_classes(name,
                                                                 options):
  samples, target = _categorical_offset_draws(name, RARE_CLASSES, **options)
  testing.assert_unbiased(samples, target,
                          name=f"{name} {options}, f + {OFFSET:g}")


@functools.lru_cache(maxsize=None)
def _bernoulli_offset_program(problem):
  logits, f = test_bernoulli._problem(*problem)

  @jax.jit
  def run(keys, const):
    return _draw_all(BERNOULLI_UNBIASED, lambda b: f(b) + const, keys,
                     [logits])

  return logits, f, run


def test_bernoulli_mean_with_a_large_offset_in_f():
  # Every unbiased Bernoulli estimator (each option variant of
  # tests/test_bernoulli.py) in one program, at logits up to |10| (D = 6).
  problem = test_bernoulli.PROBLEMS[5]
  logits, f, run = _bernoulli_offset_program(problem)
  keys = jax.random.split(jax.random.key(21), 2**14)
  draws = run(keys, jnp.float32(OFFSET))
  target = exact.bernoulli_gradient(logits, f)
  for variant, (samples,) in sorted(draws.items()):
    testing.assert_unbiased(np.asarray(samples), target,
                            name=f"{variant} on {problem}, f + {OFFSET:g}")


def test_gaussian_mean_with_a_large_offset_in_f():
  f = lambda z: test_gaussian.f_test(z) + OFFSET
  keys = jax.random.split(jax.random.key(1), 2**15)
  draws = jax.jit(lambda k: _draw_all(GAUSSIAN_ALL, f, k,
                                      [test_gaussian.PARAMS]))(keys)
  target = jax.grad(test_gaussian.expected_f)(test_gaussian.PARAMS)
  for variant, (samples,) in sorted(draws.items()):
    testing.assert_unbiased(np.asarray(samples), target,
                            name=f"gaussian {variant}, f + {OFFSET:g}")


def test_every_unbiased_estimator_is_tested_with_the_offset():
  tested = {est for est, _ in BERNOULLI_UNBIASED.values()}
  for name in estimators.UNBIASED:
    assert estimators.BERNOULLI[name] in tested, name
  assert set(test_categorical.UNBIASED) == set(estimators.UNBIASED_CATEGORICAL)
  tested = {est for est, _ in GAUSSIAN_ALL.values()}
  for name in estimators.UNBIASED_GAUSSIAN:
    assert estimators.GAUSSIAN[name] in tested, name


class _OffsetSBN(sbn.SBN):
  """test_gradients' two-layer SBN with log p + 1e4 (the gradient unmoved)."""

  def __call__(self, x, bs):
    log_p, log_q = super().__call__(x, bs)
    return log_p + OFFSET, log_q


def test_model_only_estimators_with_a_large_offset_in_log_p():
  # The unbiased layer estimators without a one-layer function (NVIL and
  # MuProp with a baseline keep their state in the composition) see the
  # offset through a model: every one of them, on the Bernoulli SBN.
  names = sorted({n for family in registry.FAMILIES
                  for n in registry.names(family=family, kind=registry.LAYER)
                  if registry.get(n).unbiased_for
                  and family not in registry.get(n).one_layer})
  model = _OffsetSBN(**{f: getattr(test_gradients.MODEL, f) for f in (
      "num_layers", "num_latents", "data_dim", "train_mean")})
  params = test_gradients._params()
  target = np.asarray(test_gradients._flat(
      test_gradients.exact_neg_elbo_grad(params)))
  for name in names:
    assert "bernoulli" in registry.get(name).families, name
    spec = gradients.EstimatorSpec(name)
    state = spec.init(jax.random.key(2), model)
    samples = testing.draws(
        lambda k, l, f, spec=spec, state=state: test_gradients._flat(
            gradients.model_gradients(model, spec, params, state,
                                      test_gradients.X, k)[0]),
        jax.random.key(3), jnp.zeros(target.shape), None, 2**14)
    testing.assert_unbiased(samples, target,
                            name=f"{name}, log p + {OFFSET:g}")
  assert names == ["muprop_baseline", "nvil"], names


# ----------------------------------------------------------------------------
# 2. Every class summed: exact draw for draw at extreme logit gaps.
# ----------------------------------------------------------------------------

GAPS = (4.0, 8.0, 12.0, 16.0, 20.0)


def _gapped_logits():
  """One variable of C = 5 classes: a dominant class at each gap, then a
  class rare by the gap next to three ordinary ones."""
  dominant = [[gap, 0.0, -0.5, 0.7, 0.2] for gap in GAPS]
  rare = [[0.0, -gap, 0.5, -0.5 * gap, 1.0] for gap in GAPS]
  return jnp.asarray(dominant + rare)


def _f32(b):
  """A nonlinear f computed in float32 also on the oracle's float64 states,
  so the exact gradient is that of the f the estimators see."""
  b = b.astype(jnp.float32)
  return (jnp.sin(3.0 * b @ jnp.arange(1.0, 6.0, dtype=jnp.float32))
          + (b @ jnp.arange(5.0, dtype=jnp.float32))**2)


@pytest.mark.parametrize("offset", [0.0, OFFSET])
def test_every_class_summed_is_exact_at_extreme_gaps(offset):
  # unordered_set with k = C and IndeCateR with one variable: every draw is
  # the exact gradient, entry by entry to float32 precision, even for
  # gradients of e^-20 and with f + 1e4 (f rounded in float32, and the
  # oracle sums the same float32 values).
  f = lambda b: _f32(b) + jnp.float32(offset)
  logits = _gapped_logits()
  keys = jax.random.split(jax.random.key(4), 16)
  draw = jax.jit(jax.vmap(jax.vmap(
      lambda k, l: jnp.stack([
          unordered_set.unordered_set(k, l, f, num_samples=5),
          categorical.indecater(k, l, f)]),
      in_axes=(0, None)), in_axes=(None, 0)))
  got = np.asarray(draw(keys, logits), np.float64)     # (L, keys, 2, C)
  for i, l in enumerate(logits):
    want = np.asarray(exact.categorical_gradient(l, f), np.float64)
    error = np.max(np.abs(got[i] - want) / np.abs(want), axis=(0, 2))
    for name, e in zip(("unordered_set k=C", "indecater"), error):
      assert e < 1e-4, (f"{name} at logits {np.asarray(l)}, f + {offset:g}: "
                        f"relative error {e:.2e}")


# ----------------------------------------------------------------------------
# 3. Half precision.
# ----------------------------------------------------------------------------


def _registered(family):
  return {"bernoulli": estimators.BERNOULLI,
          "categorical": estimators.CATEGORICAL,
          "gaussian": estimators.GAUSSIAN}[family]


@pytest.mark.parametrize("family", ["bernoulli", "categorical", "gaussian"])
def test_half_precision_dtypes_without_compiling(family):
  # Every registered estimator (and the variants above) traced, not
  # compiled: returns the logits' dtype for float16 and bfloat16, and calls
  # f on float32 samples (hard or relaxed).
  logits = {"bernoulli": jnp.array([0.5, -1.0, 2.0]),
            "categorical": jnp.array([[0.5, -1.0, 2.0], [0.1, 0.2, -0.3]]),
            "gaussian": test_gaussian.PARAMS}[family]
  variants = {"bernoulli": BERNOULLI_ALL, "categorical": CATEGORICAL_ALL,
              "gaussian": GAUSSIAN_ALL}[family]
  assert {est for est, _ in variants.values()} >= set(
      _registered(family).values())
  for dtype in HALF:
    for variant, (est, options) in sorted(variants.items()):
      seen = []

      def f(b):
        seen.append(b.dtype)
        return jnp.sum(jnp.sin(b))

      out = jax.eval_shape(lambda k, l: est(k, l, f, **options),
                           jax.random.key(0), logits.astype(dtype))
      assert out.dtype == dtype, (family, variant, dtype, out.dtype)
      assert out.shape == logits.shape, (family, variant, out.shape)
      assert seen and all(d == jnp.float32 for d in seen), (
          family, variant, dtype, seen)


def _half_problem(family):
  """(logits float32, f, variants, exact gradient of logits -> array)."""
  if family == "bernoulli":
    logits, f = test_bernoulli._problem(*test_bernoulli.PROBLEMS[1])
    return logits, f, BERNOULLI_ALL, lambda l: exact.bernoulli_gradient(l, f)
  if family == "categorical":
    logits, theta, f = test_categorical._problem(
        *test_categorical.PROBLEMS[0])
    return (logits, f, CATEGORICAL_ALL,
            lambda l: test_categorical._exact_gradient(l, theta))
  return (test_gaussian.PARAMS, test_gaussian.f_test, GAUSSIAN_ALL,
          jax.grad(test_gaussian.expected_f))


@pytest.mark.parametrize("family", ["bernoulli", "categorical", "gaussian"])
def test_half_precision_logits_keep_dtype_and_mean(family):
  # One program per family: every estimator, float16 and bfloat16 logits,
  # 2^14 draws each. Output dtype = the logits'; finite; the unbiased ones'
  # mean is the exact gradient at the rounded logits, within 4.5 standard
  # errors plus the shift that rounding each draw to half precision can
  # cause (`_half_tolerance`).
  logits, f, variants, exact_gradient = _half_problem(family)
  half = [logits.astype(dtype) for dtype in HALF]
  keys = jax.random.split(jax.random.key(31), 2**14)
  draws = jax.jit(lambda k, ls: _draw_all(variants, f, k, ls))(keys, half)
  for variant, (est, _) in sorted(variants.items()):
    for dtype, l, samples in zip(HALF, half, draws[variant]):
      name = f"{family} {variant} with {jnp.dtype(dtype).name} logits"
      assert samples.dtype == dtype, (name, samples.dtype)
      samples = np.asarray(samples.astype(jnp.float32))
      assert np.all(np.isfinite(samples)), name
      if _unbiased(family, variant, est):
        _assert_unbiased_rounded(
            samples, exact_gradient(l.astype(jnp.float32)), dtype, name)


# A model computing in half precision hands the composition half-precision
# logits and learning signals. The model path's own REINFORCE, NVIL and
# MuProp with a baseline (rebar_jax.estimators.protocol) returned float32
# estimates into the model's half-precision VJP, a JAX-internal error; every
# registered estimator of every kind must train it (issue 27, defect 4).
_EVENT = {"bernoulli": (2,), "categorical": (1, 3), "gaussian": (1,)}


class _HalfModel(nn.Module):
  """One layer of `family` whose encoder and decoder compute in `dtype`."""
  family: str
  dtype: jnp.dtype
  data_dim: int = 3

  def _logits_shape(self):
    return _EVENT[self.family] + ((2,) if self.family == "gaussian" else ())

  def setup(self):
    self.encoder = nn.Dense(int(np.prod(self._logits_shape())),
                            dtype=self.dtype)
    self.decoder = nn.Dense(self.data_dim, dtype=self.dtype)

  def stochastic_layers(self):
    return (protocol.StochasticLayer(self.family, _EVENT[self.family]),)

  def layer_logits(self, layer, x, above):
    del layer, above
    out = self.encoder(x)
    return out.reshape(out.shape[:-1] + self._logits_shape())

  def log_joint(self, x, bs):
    (b,) = bs
    b = b.astype(self.dtype)
    lead = b.shape[:b.ndim - len(_EVENT[self.family])]
    logits_q = self.layer_logits(0, x, ())
    log_prob = lambda logits: jnp.sum(testing.unit_log_prob(
        self.family, logits, b).reshape(lead + (-1,)), -1)
    x_logits = self.decoder(b.reshape(lead + (-1,)))
    log_p = log_prob(jnp.zeros_like(logits_q)) + jnp.sum(
        x * x_logits - jax.nn.softplus(x_logits), -1).astype(self.dtype)
    return log_p, log_prob(logits_q)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("family", ["bernoulli", "categorical", "gaussian"])
def test_half_precision_models_train_with_every_estimator(family, dtype):
  # Traced, not compiled: model_gradients of every registered estimator
  # (per-layer, K-sample, reparameterised, local) that applies to the
  # family returns gradients in the parameters' dtypes.
  model = _HalfModel(family, dtype)
  x = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
  params = model.init(jax.random.key(0), x, (
      jnp.zeros((2,) + _EVENT[family]),), method="log_joint")
  assert model.apply(params, 0, x, (), method="layer_logits").dtype == dtype
  want = [a.dtype for a in jax.tree.leaves(params)]
  tried = []
  for name in registry.names():
    entry = registry.get(name)
    if family not in entry.families:
      continue
    options = {} if entry.kind == registry.LAYER else {"iw_samples": 2}
    if entry.has(registry.NEEDS_AUX):
      options["aux_samples"] = 1
    spec = gradients.EstimatorSpec(name, families=(family,), **options)
    state = spec.init(jax.random.key(1), model)
    grads = jax.eval_shape(lambda p, k, spec=spec, state=state: (
        gradients.model_gradients(model, spec, p, state, x, k)[0]),
                           params, jax.random.key(2))
    assert [g.dtype for g in jax.tree.leaves(grads)] == want, (name, grads)
    tried.append(name)
  assert set(tried) >= set(registry.names(family=family, kind=registry.LAYER))



def test_half_precision_model_gradients_keep_their_mean():
  # The three estimators the composition computes itself, on a float16
  # model: the mean of model_gradients is the exact gradient of the same
  # model computed in float64 (enumeration), within 4.5 standard errors.
  model = _HalfModel("bernoulli", jnp.float16)
  x = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
  params = model.init(jax.random.key(0), x, (jnp.zeros((2, 2)),),
                      method="log_joint")
  params = jax.tree.map(lambda a: a + 0.5 * jax.random.normal(
      jax.random.key(5), a.shape), params)
  flat = lambda tree: jnp.concatenate([
      jnp.ravel(a).astype(jnp.float32) for a in jax.tree.leaves(tree)])
  with jax.enable_x64():
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    target = np.asarray(flat(jax.grad(lambda p: -jnp.mean(testing.exact_elbo(
        _HalfModel("bernoulli", jnp.float64), p,
        jnp.asarray(x, jnp.float64))))(p64)))
  for name in ("reinforce", "nvil", "muprop_baseline"):
    spec = gradients.EstimatorSpec(name)
    state = spec.init(jax.random.key(1), model)
    samples = testing.draws(lambda k, l, f, spec=spec, state=state: flat(
        gradients.model_gradients(model, spec, params, state, x, k)[0]),
                            jax.random.key(3), jnp.zeros(target.shape), None,
                            2**13)
    testing.assert_unbiased(samples, target, name=f"float16 model, {name}")

"""Numerical precision: a large offset in f, extreme logit gaps.

Two proofs, each against the exact gradient (enumeration in float64,
`estimators.exact`, or the Gaussian closed form of tests/test_gaussian.py):

* Offset: d/dl E[f + c] = d/dl E[f], and every unbiased estimator must keep
  it in float32 with c = 1e4 (a VAE's learning signal of hundreds or
  thousands of nats): the Monte Carlo mean of f + 1e4 is tested against the
  exact gradient of f, z <= 4.5, for every unbiased Bernoulli, categorical
  and Gaussian estimator. The textbook IndeCateR (p F - p (p . F)) and the
  unordered set estimator (probability ratios times f) failed it before they
  were centred (`categorical.indecater`, `categorical.unordered_set`).
* Exactness at extreme gaps: the unordered set estimator at k = C and
  IndeCateR with one variable sum over every class, so every draw is the
  exact gradient; it must stay so, to float32 precision, for logit gaps up to
  20 and with the offset (the log set probability once cancelled in
  1 - p(A)).

Compiles are grouped: the categorical offset draws reuse tests/
test_categorical.py's compiled draws (the offset is the traced theta["const"]
of its f family); every other group is one jitted program for all the
estimators of a family.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rebar_jax import estimators
from rebar_jax import testing
from rebar_jax.estimators import categorical
from rebar_jax.estimators import exact
from rebar_jax.estimators import gaussian

import test_bernoulli
import test_categorical
import test_gaussian

OFFSET = 1e4

# ----------------------------------------------------------------------------
# Shared: every variant of a family's estimators, drawn in one program.
# ----------------------------------------------------------------------------

# The Bernoulli variants of tests/test_bernoulli.py (defaults and options),
# every unbiased estimator at least once.
BERNOULLI_UNBIASED = {**test_bernoulli.UNBIASED_VARIANTS,
                      **test_bernoulli.FRONTIER_VARIANTS}
GAUSSIAN_ALL = {"reinforce": (gaussian.reinforce, {}),
                "reinforce_loo_3": (gaussian.reinforce_loo, {"num_samples": 3}),
                "pathwise": (gaussian.pathwise, {})}


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
          categorical.unordered_set(k, l, f, num_samples=5),
          categorical.indecater(k, l, f)]),
      in_axes=(0, None)), in_axes=(None, 0)))
  got = np.asarray(draw(keys, logits), np.float64)     # (L, keys, 2, C)
  for i, l in enumerate(logits):
    want = np.asarray(exact.categorical_gradient(l, f), np.float64)
    error = np.max(np.abs(got[i] - want) / np.abs(want), axis=(0, 2))
    for name, e in zip(("unordered_set k=C", "indecater"), error):
      assert e < 1e-4, (f"{name} at logits {np.asarray(l)}, f + {offset:g}: "
                        f"relative error {e:.2e}")

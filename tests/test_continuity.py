"""REBAR and RELAX need f continuous on the relaxed domain: shown, and probed.

A jump of f between relaxed points biases REBAR and RELAX silently (their
control variate is differentiated along z); `continuity` finds such jumps in
a function or in a model's relaxed learning signal, and the trainer refuses a
user's model whose signal jumps.
"""
from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from rebar_jax import estimators
from rebar_jax import gradients
from rebar_jax import testing
from rebar_jax.estimators import continuity
from rebar_jax.models import protocol

import tiny_models

FLOOR = lambda b: jnp.floor(1.5 * b[..., 0].sum())   # = b on {0, 1}


class Thresholded(tiny_models.TwoLayer):
  """TwoLayer whose log p reads its upper layer through b > 0.5."""

  def log_joint(self, x, bs):
    a, c = bs
    log_p, log_q = super().log_joint(x, (a, c))
    return log_p + 3.0 * jnp.sum(jnp.where(a > 0.5, 1.0, 0.0), -1), log_q


class ContinuityTest(parameterized.TestCase):

  @parameterized.parameters(("bernoulli", "rebar"), ("bernoulli", "relax"),
                            ("categorical", "rebar"))
  def test_a_jump_in_f_biases_the_relaxed_estimators(self, family, name):
    logits = (jnp.array([0.3]) if family == "bernoulli"
              else jnp.array([[0.3, -0.2, 0.5]]))
    exact = (estimators.exact.bernoulli_gradient if family == "bernoulli"
             else estimators.exact.categorical_gradient)(logits, FLOOR)
    samples = testing.draws(estimators.get(name, family), jax.random.key(0),
                            logits, FLOOR, 2**14)
    testing.assert_biased(samples, exact, name=f"{family} {name}")

  @parameterized.parameters(
      ("bernoulli", FLOOR), ("categorical", FLOOR),
      ("bernoulli", lambda b: jnp.sum(jnp.where(b > 0.5, 2.0, -1.0))),
      ("bernoulli", lambda b: jnp.sum(jnp.round(b) * jnp.arange(3.0))))
  def test_jumps_are_refused(self, family, f):
    logits = jnp.zeros((3,)) if family == "bernoulli" else jnp.zeros((2, 3))
    with self.assertRaisesRegex(ValueError, "must be continuous in b"):
      continuity.check_continuity(jax.random.key(0), logits, f, family=family)

  @parameterized.parameters(
      ("bernoulli", jnp.array([0.5, -1.0, 2.0]),
       lambda b: jnp.sum((b - 0.45) ** 2) + b[0] * b[1]),
      ("bernoulli", jnp.array([30.0, -30.0, 0.0]),
       lambda b: 1e4 + jnp.sum(jnp.log(b + 1e-3))),
      ("categorical", jnp.array([[2.0, -1.0, 0.0]]),
       lambda b: jnp.sum(b * jnp.arange(3.0)) ** 2 - 300.0))
  def test_continuous_functions_pass(self, family, logits, f):
    continuity.check_continuity(jax.random.key(0), logits, f, family=family)

  def test_a_model_signal_that_jumps_is_found(self):
    x = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    spec = gradients.EstimatorSpec("rebar")
    sizes = []
    for cls in (tiny_models.TwoLayer, Thresholded):
      model = cls(("bernoulli", "bernoulli"), ((2,), (2,)))
      params = model.init(jax.random.key(0), x, (jnp.zeros((2, 2)),) * 2,
                          method="log_joint")
      jump = gradients.relaxed_signal_jump(model, spec, params, x,
                                           jax.random.key(1))
      sizes.append(float(jump.size / jump.scale))
    self.assertLess(sizes[0], 1e-5)
    self.assertGreater(sizes[1], 0.1)
    with self.assertRaisesRegex(ValueError, "must be continuous"):
      continuity.report(jump, 1e-4, "log p - log q")
    self.assertIsNone(gradients.relaxed_signal_jump(
        model, gradients.EstimatorSpec("disarm"), params, x,
        jax.random.key(1)))

  def test_the_requirement_is_stated_where_users_read(self):
    """The relaxed estimators' docstrings and the model protocol say that f
    (log_joint) must be continuous on the relaxed domain, and name the probe
    (issue 27: the contract did not say so)."""
    for fn in (estimators.bernoulli.rebar, estimators.bernoulli.relax,
               estimators.categorical.rebar, estimators.categorical.relax):
      doc = " ".join(fn.__doc__.split())
      self.assertIn("must be continuous", doc, fn.__qualname__)
      self.assertIn("continuity.check_continuity", doc, fn.__qualname__)
      self.assertNotRegex(doc.split(".")[0], r"unbiased for any \w+ and "
                          r"(temperature|lambda)$")
    doc = " ".join(protocol.__doc__.split())
    self.assertIn("be continuous in them", doc)
    self.assertIn("estimators.continuity", doc)


if __name__ == "__main__":
  absltest.main()

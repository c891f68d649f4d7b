"""Gradient variance/SNR, effective sample size and active units."""
from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from rebar_jax import diagnostics
from rebar_jax import gradients
from rebar_jax.models import sbn as sbn_lib

MODEL = sbn_lib.SBN(num_layers=1, num_latents=6, data_dim=10)
X = (jax.random.uniform(jax.random.key(0), (8, 10)) < 0.4).astype(jnp.float32)


def _params(scale=1.0):
  params = MODEL.init(jax.random.key(1), X, (jnp.zeros((8, 6)),))
  return jax.tree.map(lambda p: p * scale, params)


class DiagnosticsTest(absltest.TestCase):

  def test_gradient_statistics_match_the_draws(self):
    spec = gradients.EstimatorSpec("reinforce")
    state = spec.init(jax.random.key(2), MODEL)
    stats = diagnostics.gradient_statistics(MODEL, spec, _params(), state, X,
                                            jax.random.key(3), num_draws=32)
    one = jax.jit(lambda k: jnp.concatenate([
        jnp.ravel(g) for g in jax.tree.leaves(gradients.model_gradients(
            MODEL, spec, _params(), state, X, k)[0]["params"]["encoders_0"])]))
    draws = np.stack([one(k) for k in jax.random.split(jax.random.key(3), 32)])
    std = draws.std(0, ddof=1)
    np.testing.assert_allclose(stats["grad_log_variance"],
                               np.log(np.mean(std**2)), rtol=1e-4)
    snr = np.mean(np.where(std > 0, np.abs(draws.mean(0)) / np.where(
        std > 0, std, 1), 0))
    np.testing.assert_allclose(stats["grad_snr"], snr, rtol=1e-4)

  def test_ess_is_between_one_and_k(self):
    ess_of = jax.jit(lambda p: diagnostics.effective_sample_size(
        MODEL, p, X, jax.random.key(4), 20))
    ess = float(ess_of(_params()))
    self.assertBetween(ess, 1.0, 20.0)
    # A posterior-free model: zero weights everywhere give w_k = p(x), equal
    # for every sample, so the ESS is exactly K.
    flat = ess_of(_params(0.0))
    self.assertAlmostEqual(float(flat), 20.0, places=3)

  def test_active_units(self):
    self.assertEqual(int(diagnostics.active_units(MODEL, _params(0.0), X)), 0)
    big = jax.tree.map(lambda p: 5.0 * p, _params())
    self.assertGreater(int(diagnostics.active_units(MODEL, big, X)), 0)
    self.assertLessEqual(int(diagnostics.active_units(MODEL, big, X)), 6)


if __name__ == "__main__":
  absltest.main()

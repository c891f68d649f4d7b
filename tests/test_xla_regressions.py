"""Guards against compiler bugs that silently change estimator values.

jaxlib 0.10.2 on CPU miscompiles `sum(g * x, axis=1, keepdims=True) * x` for
8192 or 16384 rows (XLA's YNNPACK reduce fusion; 0.10.1 and earlier and the
float64 path are correct). MuProp computes exactly this shape of expression, and
the unbiasedness tests caught it as a z-score of 46. setup.py excludes that
release; this test fails loudly if a broken jaxlib is installed anyway.
"""
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import pytest


@pytest.mark.optimized
class RowReductionTest(parameterized.TestCase):

  def test_compiled_with_xla_defaults(self):
    # The suite turns most optimisations off (tests/conftest.py); the
    # miscompile lives in an optimisation, so this class must run with them.
    self.assertFalse(jax.config.read("jax_disable_most_optimizations"))

  @parameterized.parameters(4096, 8192, 16384, 32768)
  def test_weighted_row_sum_times_rows(self, rows):
    x = np.random.default_rng(0).uniform(size=(rows, 5)).astype(np.float32)
    g = np.array([-6.8, -0.05, 5.39, -3.2, 1.4], np.float32)
    got = jax.jit(lambda x: jnp.sum(g * x, axis=1, keepdims=True) * x)(x)
    np.testing.assert_allclose(np.asarray(got), (x @ g)[:, None] * x,
                               rtol=1e-5, atol=1e-5,
                               err_msg=f"jaxlib {jax.lib.__version__}")

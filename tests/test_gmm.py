"""The Gaussian mixture model of Le et al. (2019) / OVIS Fig. 2.

Its closed forms (the mixture density, the true posterior, the errors) and
one multi-sample estimator's gradient against the exact gradient of E[L_2],
enumerated over the C^2 = 400 joint states of two samples.
"""
import jax
from jax import flatten_util
import jax.numpy as jnp
import numpy as np

from rebar_jax import gradients
from rebar_jax import testing
from rebar_jax.models import gmm

MODEL = gmm.GaussianMixture()
X = jnp.array([[3.0], [47.0], [120.0]])
VARIABLES = MODEL.init(jax.random.key(0), X[:1], jnp.zeros((1, 20)))


def test_joint_sums_to_the_mixture_density_and_the_posterior():
  states = jnp.eye(20)
  truth = {"params": dict(VARIABLES["params"],
                          prior_logits=MODEL.true_prior_logits())}
  log_p, _ = MODEL.apply(truth, jnp.broadcast_to(X[1], (20, 1)), (states,),
                         method="log_joint")
  pi = jax.nn.softmax(MODEL.true_prior_logits())
  mixture = jnp.sum(pi * jnp.exp(-0.5 * ((47.0 - 10 * jnp.arange(20)) / 5)**2)
                    / (5 * jnp.sqrt(2 * jnp.pi)))
  np.testing.assert_allclose(jax.nn.logsumexp(log_p), jnp.log(mixture),
                             rtol=1e-5)
  np.testing.assert_allclose(jax.nn.softmax(log_p),
                             MODEL.apply(truth, X[1], method="true_posterior"),
                             atol=1e-6)
  errors = MODEL.apply(truth, X, method="errors")
  np.testing.assert_allclose(errors["prior_error"], 0.0, atol=1e-6)
  assert 0.0 < errors["posterior_error"] < np.sqrt(2.0)


def test_data_come_from_the_true_mixture():
  x = MODEL.apply(VARIABLES, jax.random.key(1), 200_000,
                  method="sample_data")
  pi = jax.nn.softmax(MODEL.true_prior_logits())
  np.testing.assert_allclose(x.mean(), jnp.sum(pi * 10 * jnp.arange(20)),
                             atol=0.2)


def test_vimco_gradient_is_unbiased_for_the_iw_bound():
  spec = gradients.EstimatorSpec("vimco_arithmetic", families=("categorical",),
                                 iw_samples=2)
  x = X[:2]
  exact = flatten_util.ravel_pytree(jax.grad(
      lambda v: -jnp.mean(testing.exact_iw_bound(MODEL, v, x, 2)))(
          VARIABLES))[0]
  one = lambda k: flatten_util.ravel_pytree(gradients.model_gradients(
      MODEL, spec, VARIABLES, spec.init(None, MODEL), x, k)[0])[0]
  draws = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(2), 2**14))
  testing.assert_unbiased(np.asarray(draws), exact, name="vimco on the GMM")

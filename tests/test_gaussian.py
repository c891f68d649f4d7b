"""Gaussian latents: the family, its estimators, and the multi-sample gradients.

Exactness cannot be enumerated for continuous latents, so the references are
closed forms: for one Gaussian layer, E[f(z)] of f(z) = sum sin(z_i) + (sum
z_i)^2 / 2 is known (E sin z = sin(mu) exp(-sigma^2 / 2)); for the linear-
Gaussian model (`models.gaussian.LinearGaussian`) the ELBO, log p(x) and the
posterior are known. E[L_K] for K > 1 has no closed form: there every
estimator unbiased for it is compared with the pathwise IWAE gradient and
DReG of the same objective (a two-sample z-score from the same draws), and
the biased ones (OVIS-gamma=1, RWS's wake-phi) are shown off.
"""
import math

import jax
from jax import flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from rebar_jax import estimators
from rebar_jax import gradients
from rebar_jax import objectives
from rebar_jax import testing
from rebar_jax.estimators import gaussian
from rebar_jax.estimators import registry
from rebar_jax.models import gaussian as gaussian_models
from rebar_jax.models import protocol as models_protocol
from rebar_jax.models import sbn

PARAMS = gaussian.params_from(jnp.array([0.4, -1.2, 2.0]),
                              jnp.array([-0.3, 0.2, -1.0]))


def f_test(z):
  return jnp.sum(jnp.sin(z)) + 0.5 * jnp.sum(z)**2


def expected_f(params):
  mu, log_std = gaussian.split(params)
  var = jnp.exp(2 * log_std)
  return (jnp.sum(jnp.sin(mu) * jnp.exp(-var / 2))
          + 0.5 * (jnp.sum(mu)**2 + jnp.sum(var)))


class TestFamily:

  def test_score_is_the_gradient_of_log_prob(self):
    z = jnp.array([0.1, -2.0, 2.5])
    want = jax.grad(lambda p: jnp.sum(gaussian.log_prob(p, z)))(PARAMS)
    np.testing.assert_allclose(gaussian.score(PARAMS, z), want, rtol=1e-5)

  def test_log_prob_is_the_normal_density(self):
    z = jnp.array([0.1, -2.0, 2.5])
    mu, log_std = gaussian.split(PARAMS)
    want = -0.5 * ((z - mu) / jnp.exp(log_std))**2 - log_std - 0.5 * math.log(
        2 * math.pi)
    np.testing.assert_allclose(gaussian.log_prob(PARAMS, z), want, rtol=1e-6)

  def test_samples_have_the_mean_and_scale(self):
    eps = gaussian.noise(jax.random.key(0), (200_000, 3))
    z = gaussian.sample_from_noise(PARAMS, eps)
    mu, log_std = gaussian.split(PARAMS)
    np.testing.assert_allclose(z.mean(0), mu, atol=0.01)
    np.testing.assert_allclose(z.std(0), jnp.exp(log_std), rtol=0.01)

  def test_bad_parameters_are_refused(self):
    with pytest.raises(ValueError, match="last axis of size 2"):
      gaussian.pathwise(jax.random.key(0), jnp.zeros((3,)), f_test)
    with pytest.raises(ValueError, match="shape of the sample"):
      gaussian.reinforce(jax.random.key(0), PARAMS, f_test,
                         noise=jnp.zeros((3, 2)))


@pytest.mark.parametrize("name,options", [
    ("reinforce", {}), ("reinforce_loo", {"num_samples": 3}),
    ("pathwise", {})])
def test_one_layer_estimators_are_unbiased(name, options):
  target = jax.grad(expected_f)(PARAMS)
  draws = testing.draws(estimators.GAUSSIAN[name], jax.random.key(1), PARAMS,
                        f_test, num_draws=2**15, **options)
  testing.assert_unbiased(draws, target, name=name)


def test_given_noise_gives_the_same_draw():
  key = jax.random.key(3)
  eps, _ = gaussian.noise_and_spare_key(key, (3,))
  for name in estimators.GAUSSIAN:
    np.testing.assert_allclose(
        estimators.GAUSSIAN[name](key, PARAMS, f_test),
        estimators.GAUSSIAN[name](key, PARAMS, f_test, noise=eps), rtol=1e-6)


# ----------------------------------------------------------------------------
# The linear-Gaussian model: closed forms and the model-level gradients.
# ----------------------------------------------------------------------------

DIM = 3
X = jnp.array([[1.0, 0.5, -0.2]])
MODEL = gaussian_models.LinearGaussian(dim=DIM)


def perturbed_variables():
  """Near q's optimum (prior mean (0.3, -1, 2)), deterministically perturbed."""
  v = gaussian_models.linear_gaussian_optimum(jnp.array([0.3, -1.0, 2.0]))
  return jax.tree.map(
      lambda a: a + 0.3 * jax.random.normal(jax.random.key(a.size), a.shape),
      v)


VARIABLES = perturbed_variables()


def gradient_draws(name, num_draws, iw_samples=1, **options):
  """(num_draws, P) model gradients of `name` on X, flattened."""
  spec = gradients.EstimatorSpec(name, families=("gaussian",),
                                 iw_samples=iw_samples, **options)
  state = spec.init(jax.random.key(0), MODEL)
  one = lambda k: flatten_util.ravel_pytree(gradients.model_gradients(
      MODEL, spec, VARIABLES, state, X, k)[0])[0]
  keys = jax.random.split(jax.random.key(7), num_draws)
  return np.asarray(jax.jit(jax.vmap(one))(keys))


def test_exact_posterior_makes_every_log_weight_log_px():
  model = gaussian_models.LinearGaussian(dim=DIM, q_variance=0.5)
  v = gaussian_models.linear_gaussian_optimum(jnp.array([0.3, -1.0, 2.0]))
  log_px = model.apply(v, X, method="log_marginal")
  for k in (1, 7):
    np.testing.assert_allclose(
        objectives.iw_bound(model, v, X, jax.random.key(k), num_samples=k),
        log_px, rtol=1e-6)
  np.testing.assert_allclose(model.apply(v, X, method="elbo"), log_px,
                             rtol=1e-6)


def test_dreg_vanishes_at_the_exact_posterior_and_pathwise_does_not():
  """q = p(z | x): DReG's phi-gradient is 0 draw for draw (its SNR story)."""
  model = gaussian_models.LinearGaussian(dim=DIM, q_variance=0.5)
  v = gaussian_models.linear_gaussian_optimum(jnp.array([0.3, -1.0, 2.0]))
  out = {}
  for name in ("dreg", "iwae_pathwise"):
    spec = gradients.EstimatorSpec(name, families=("gaussian",), iw_samples=4)
    g = gradients.model_gradients(model, spec, v, spec.init(None, model), X,
                                  jax.random.key(0))[0]
    out[name] = g["params"]["encoder"]["bias"]
  np.testing.assert_allclose(out["dreg"], 0.0, atol=1e-5)
  assert np.max(np.abs(out["iwae_pathwise"])) > 0.1


def test_the_closed_form_elbo_matches_sampling():
  e = jax.vmap(lambda k: objectives.elbo(MODEL, VARIABLES, X, k))(
      jax.random.split(jax.random.key(0), 2**15))
  testing.assert_unbiased(np.asarray(e), MODEL.apply(VARIABLES, X,
                                                     method="elbo"))


@pytest.mark.parametrize("name,options", [
    ("pathwise", {}), ("reinforce", {}), ("reinforce_loo", {"loo_samples": 3}),
    ("elbo_loo", {"iw_samples": 4}), ("vargrad", {"iw_samples": 4})])
def test_elbo_gradients_are_unbiased(name, options):
  """Every parameter (A, b, mu) against the closed-form ELBO's gradient."""
  exact = flatten_util.ravel_pytree(jax.grad(
      lambda v: -jnp.mean(MODEL.apply(v, X, method="elbo")))(VARIABLES))[0]
  testing.assert_unbiased(gradient_draws(name, 2**14, **options), exact,
                          name=name)


K = 4
N_IW = 2**14


@pytest.fixture(scope="module")
def iw_reference():
  """DReG's and the pathwise IWAE gradient's draws of -grad E[L_K]."""
  return {name: gradient_draws(name, N_IW, iw_samples=K)
          for name in ("dreg", "iwae_pathwise")}


def two_sample_z(a, b):
  se = np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
  return np.abs(a.mean(0) - b.mean(0)) / se


def test_dreg_and_pathwise_agree(iw_reference):
  assert np.max(two_sample_z(iw_reference["dreg"],
                             iw_reference["iwae_pathwise"])) < 4.5


@pytest.mark.parametrize("name,options", [
    ("iwae_reinforce", {}), ("vimco_arithmetic", {}),
    ("vimco_geometric", {}), ("ovis_gamma0", {}),
    ("ovis_mc", {"aux_samples": 3})])
def test_score_function_iw_gradients_are_unbiased(iw_reference, name, options):
  """Score-function estimators of grad E[L_K] on Gaussian z vs DReG."""
  g = gradient_draws(name, N_IW, iw_samples=K, **options)
  z = two_sample_z(g, iw_reference["dreg"])
  assert np.max(z) < 4.5, (name, z)


@pytest.mark.parametrize("name", ["ovis_gamma1", "rws"])
def test_biased_iw_gradients_are_shown_biased(iw_reference, name):
  g = gradient_draws(name, N_IW, iw_samples=K)
  assert np.max(two_sample_z(g, iw_reference["dreg"])) > 6.0


def test_dreg_has_lower_variance_than_pathwise(iw_reference):
  """Tucker et al. (2019): lower inference-network variance at K = 4."""
  var = {n: iw_reference[n].var(0).sum() for n in iw_reference}
  assert var["dreg"] < var["iwae_pathwise"]


def test_reparameterised_sample_is_the_sample():
  a = models_protocol.sample(MODEL, VARIABLES, X, jax.random.key(2))
  b = models_protocol.reparameterised_sample(MODEL, VARIABLES, X,
                                             jax.random.key(2))
  np.testing.assert_array_equal(a[0], b[0])


def test_pathwise_objectives_need_gaussian_layers():
  with pytest.raises(ValueError, match=r"applies to \['gaussian'\] layers"):
    gradients.EstimatorSpec("dreg", families=("bernoulli",), iw_samples=4)
  with pytest.raises(ValueError, match="no reparameterisation"):
    models_protocol.reparameterised_sample(
        sbn.SBN(num_layers=1, num_latents=3, data_dim=4), None, jnp.zeros((1, 4)),
        jax.random.key(0))


def test_auxiliary_samples_only_for_ovis_mc():
  with pytest.raises(ValueError, match="aux_samples=5"):
    gradients.EstimatorSpec("ovis_mc", families=("gaussian",), iw_samples=4)
  with pytest.raises(ValueError, match="aux_samples=2 is set.*leave it at 0"):
    gradients.EstimatorSpec("vimco_arithmetic", families=("gaussian",),
                            iw_samples=4, aux_samples=2)
  with pytest.raises(ValueError, match="aux_samples=2 is set, but 'reinforce' does not read"):
    gradients.EstimatorSpec("reinforce", families=("gaussian",),
                            aux_samples=2)


def test_registry_has_the_gaussian_family():
  assert set(registry.names(family="gaussian", kind=registry.LAYER)) == {
      "reinforce", "nvil", "reinforce_loo", "pathwise"}


def test_renyi_warmup_anneals_alpha_to_the_iw_objective():
  """alpha(step) falls linearly to 0; at and after the end of the warm-up
  the gradient is the IW objective's, before it the Renyi bound's."""
  spec = gradients.EstimatorSpec("vimco_arithmetic", families=("gaussian",),
                                 iw_samples=4, renyi_alpha=0.8,
                                 renyi_warmup_steps=100)
  np.testing.assert_allclose([float(spec.renyi_alpha_at(s)) for s in (0, 25, 100, 500)],
                             [0.8, 0.6, 0.0, 0.0], rtol=1e-6)
  plain = gradients.EstimatorSpec("vimco_arithmetic", families=("gaussian",),
                                  iw_samples=4)
  fixed = gradients.EstimatorSpec("vimco_arithmetic", families=("gaussian",),
                                  iw_samples=4, renyi_alpha=0.8)
  grad = lambda sp, step: flatten_util.ravel_pytree(gradients.model_gradients(
      MODEL, sp, VARIABLES, sp.init(None, MODEL), X, jax.random.key(4),
      step)[0])[0]
  np.testing.assert_allclose(grad(spec, 100), grad(plain, None), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(grad(spec, 0), grad(fixed, None), rtol=1e-5,
                             atol=1e-6)
  assert np.max(np.abs(grad(spec, 0) - grad(plain, None))) > 1e-3
  with pytest.raises(ValueError, match="renyi_alpha=0.5 is set, but 'dreg' does not read"):
    gradients.EstimatorSpec("dreg", families=("gaussian",), iw_samples=4,
                            renyi_alpha=0.5)
  with pytest.raises(ValueError, match=r"renyi_alpha must be a number in \[0.0, 1.0\)"):
    gradients.EstimatorSpec("vimco_arithmetic", families=("gaussian",),
                            iw_samples=4, renyi_alpha=1.0)


def test_tvo_options_are_checked():
  with pytest.raises(ValueError, match="tvo_partitions=3 is set, but 'vimco_arithmetic' does not"):
    gradients.EstimatorSpec("vimco_arithmetic", iw_samples=4,
                            tvo_partitions=3)
  with pytest.raises(ValueError, match=r"tvo_beta_min must be a number in"):
    gradients.EstimatorSpec("tvo", iw_samples=4, tvo_beta_min=2.0)

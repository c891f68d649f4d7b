"""The variance gradient and the optimal eta, checked numerically."""
from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rebar_jax import estimators
from rebar_jax.estimators import bernoulli
from rebar_jax.estimators import control_variates as cv


def _problem(dim=4, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  logits = jax.random.uniform(k1, (dim,), minval=-2.0, maxval=2.0)
  a = jax.random.normal(k2, (dim, dim)) / dim
  w = jax.random.normal(k3, (dim,))
  return logits, lambda b: b @ a @ b + jnp.sin(2 * w @ b)


def _mean_square(estimate_fn, keys):
  """(1/n) sum_k (1/M) |g^_k|^2 over fixed keys: deterministic in phi."""
  return jnp.mean(jax.vmap(lambda k: cv.variance_loss(estimate_fn(k)))(keys))


def _sample_variance(estimate_fn, keys):
  """Mean over coordinates of the per-coordinate variance across draws."""
  g = jax.vmap(estimate_fn)(keys)
  return jnp.mean(jnp.var(g, axis=0))


def _directional_fd(fn, params, direction, eps):
  plus = jax.tree.map(lambda p, d: p + eps * d, params, direction)
  minus = jax.tree.map(lambda p, d: p - eps * d, params, direction)
  return (fn(plus) - fn(minus)) / (2 * eps)


def _dot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a),
                                             jax.tree.leaves(b)))


def _estimators():
  """(name, init params, phi -> key -> g^) for REBAR and RELAX."""
  logits, f = _problem()
  rebar_params = cv.RebarParams.create(eta=0.8, temperature=0.7)
  relax_params = bernoulli.init_relax_params(jax.random.key(1), 4, (8,), 0.7)
  # Move the MLP off its zero init so all its parameters have gradients.
  relax_params = relax_params._replace(mlp=[
      (w + 0.2 * jax.random.normal(jax.random.key(i), w.shape), b)
      for i, (w, b) in enumerate(relax_params.mlp)])
  return [
      ("rebar", rebar_params,
       lambda p: lambda k: cv.rebar_with_params(k, logits, f, p)),
      ("relax", relax_params,
       lambda p: lambda k: estimators.relax(k, logits, f, cv_params=p)),
  ]


class VarianceGradientTest(parameterized.TestCase):

  @parameterized.named_parameters(*[(n, n) for n in ("rebar", "relax")])
  def test_matches_finite_differences_of_mean_square(self, name):
    _, params, make = dict((e[0], e) for e in _estimators())[name]
    keys = jax.random.split(jax.random.key(2), 256)
    grads = jax.jit(jax.vmap(lambda k: cv.variance_gradient(
        lambda p: make(p)(k), params)[1]))(keys)
    grad = jax.tree.map(lambda g: jnp.mean(g, 0), grads)
    fn = jax.jit(lambda p: _mean_square(make(p), keys))
    for seed in range(3):
      leaves, treedef = jax.tree.flatten(params)
      dkeys = jax.random.split(jax.random.key(10 + seed), len(leaves))
      direction = jax.tree.unflatten(treedef, [
          jax.random.normal(k, x.shape) for k, x in zip(dkeys, leaves)])
      fd = _directional_fd(fn, params, direction, eps=1e-2)
      np.testing.assert_allclose(_dot(grad, direction), fd, rtol=2e-2,
                                 atol=1e-5)

  @parameterized.named_parameters(*[(n, n) for n in ("rebar", "relax")])
  def test_matches_finite_differences_of_measured_variance(self, name):
    # The measured (sample) variance differs from the mean square by the
    # square of the sample mean, whose derivative in phi vanishes as n grows
    # since E[g^] does not depend on phi.
    _, params, make = dict((e[0], e) for e in _estimators())[name]
    keys = jax.random.split(jax.random.key(3), 2**14)
    grads = jax.jit(jax.vmap(lambda k: cv.variance_gradient(
        lambda p: make(p)(k), params)[1]))(keys)
    grad = jax.tree.map(lambda g: jnp.mean(g, 0), grads)
    fn = jax.jit(lambda p: _sample_variance(make(p), keys))
    leaves, treedef = jax.tree.flatten(params)
    direction = jax.tree.unflatten(treedef, [
        jax.random.normal(jax.random.key(i), x.shape)
        for i, x in enumerate(leaves)])
    fd = _directional_fd(fn, params, direction, eps=1e-2)
    np.testing.assert_allclose(_dot(grad, direction), fd, rtol=0.1)

  def test_returns_the_estimate_itself(self):
    _, params, make = _estimators()[0]
    key = jax.random.key(4)
    g, _ = jax.jit(lambda p: cv.variance_gradient(
        lambda q: make(q)(key), p))(params)
    np.testing.assert_allclose(g, jax.jit(lambda p: make(p)(key))(params),
                               rtol=1e-6)

  def test_adam_on_the_variance_gradient_reduces_variance(self):
    logits, f = _problem(dim=6, seed=5)
    eval_keys = jax.random.split(jax.random.key(6), 4096)
    variance = jax.jit(lambda p: _sample_variance(
        lambda k: cv.rebar_with_params(k, logits, f, p), eval_keys))
    params = cv.RebarParams.create(eta=0.1, temperature=2.0)
    opt = optax.adam(3e-2)
    state = opt.init(params)

    @jax.jit
    def step(carry, key):
      params, state = carry
      keys = jax.random.split(key, 16)
      _, grads = jax.vmap(lambda k: cv.variance_gradient(
          lambda p: cv.rebar_with_params(k, logits, f, p), params))(keys)
      grads = jax.tree.map(lambda g: jnp.mean(g, 0), grads)
      updates, state = opt.update(grads, state)
      return (optax.apply_updates(params, updates), state), None

    (tuned, _), _ = jax.lax.scan(step, (params, state),
                                 jax.random.split(jax.random.key(7), 300))
    self.assertLess(float(variance(tuned)), 0.8 * float(variance(params)))


class OptimalEtaTest(absltest.TestCase):

  def test_optimal_eta_minimises_the_measured_variance(self):
    logits, f = _problem(dim=5, seed=8)
    keys = jax.random.split(jax.random.key(9), 2**14)
    r, h = jax.vmap(lambda k: estimators.rebar_terms(k, logits, f))(keys)
    eta = float(cv.optimal_eta(r, h))
    var = lambda e: float(jnp.mean(jnp.var(r - e * h, axis=0)))
    for other in (0.0, 1.0, eta - 0.2, eta + 0.2, 2 * eta):
      self.assertLessEqual(var(eta), var(other) * (1 + 1e-4), (eta, other))
    # A dense grid agrees with the closed form.
    grid = np.linspace(eta - 1.0, eta + 1.0, 201)
    self.assertAlmostEqual(grid[np.argmin([var(e) for e in grid])], eta,
                           delta=0.02)

  def test_online_eta_converges_to_batch_estimate(self):
    logits, f = _problem(dim=5, seed=8)
    keys = jax.random.split(jax.random.key(10), 2**14)
    r, h = jax.vmap(lambda k: estimators.rebar_terms(k, logits, f))(keys)
    state = cv.EtaState.init()
    self.assertAlmostEqual(float(state.eta(default=0.3)), 0.3, places=6)
    state, _ = jax.lax.scan(
        lambda s, rh: (s.update(rh[0], rh[1], decay=0.999), None),
        state, (r, h))
    self.assertAlmostEqual(float(state.eta()), float(cv.optimal_eta(r, h)),
                           delta=0.1)

  def test_rebar_params_validation(self):
    with self.assertRaisesRegex(ValueError, "temperature must be > 0"):
      cv.RebarParams.create(temperature=-1.0)


if __name__ == "__main__":
  absltest.main()

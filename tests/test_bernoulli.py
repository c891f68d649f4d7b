"""Proofs of the Bernoulli estimators against exact gradients by enumeration.

Each unbiased estimator's Monte Carlo mean must be within z <= 4.5 standard
errors (estimated from the same draws) of the exact gradient, on problems with
D up to 8 latents, nonlinear f with interactions, and logits up to |10|.
Keys are fixed, so the suite is deterministic.
"""

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

from rebar_jax import estimators
from rebar_jax import testing
from rebar_jax.estimators import bernoulli
from rebar_jax.estimators import control_variates
from rebar_jax.estimators import copulas
from rebar_jax.estimators import exact
from rebar_jax.estimators import noise as noise_lib

NUM_DRAWS = 2**17


def _problem(seed: int, dim: int, kind: str, scale: float = 4.0):
  """Random logits (with large magnitudes) and a nonlinear f of b."""
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
  logits = jax.random.uniform(k1, (dim,), minval=-scale, maxval=scale)
  w = jax.random.normal(k2, (dim,))
  a = jax.random.normal(k3, (dim, dim)) / dim
  t = jax.random.uniform(k4, (dim,))
  fs = {
      # the toy objective of the REBAR/RELAX papers, summed over latents
      "square": lambda b: jnp.sum((b - t) ** 2),
      # quadratic form: every pair of latents interacts
      "quadratic": lambda b: b @ a @ b + w @ b,
      # a bounded, highly nonlinear function of all latents
      "sine": lambda b: jnp.sin(3.0 * (w @ b) + 1.0),
      # log-sum-exp of a linear function, like a log-likelihood
      "softplus": lambda b: jax.nn.softplus(w @ b - 1.0) * 2.0,
  }
  return logits, fs[kind]


# (seed, D, f, logit scale)
PROBLEMS = [
    (0, 1, "square", 2.0),
    (1, 3, "quadratic", 4.0),
    (2, 5, "sine", 4.0),
    (3, 8, "softplus", 4.0),
    (4, 8, "quadratic", 10.0),
    (5, 6, "sine", 10.0),
]

UNBIASED_VARIANTS = {
    "reinforce": (estimators.reinforce, {}),
    "reinforce_baseline": (estimators.reinforce, {"baseline": 0.7}),
    "reinforce_loo_2": (estimators.reinforce_loo, {}),
    "reinforce_loo_5": (estimators.reinforce_loo, {"num_samples": 5}),
    "arm": (estimators.arm, {}),
    "disarm": (estimators.disarm, {}),
    "muprop": (estimators.muprop, {}),
    "rebar": (estimators.rebar, {}),
    "rebar_eta_temp": (estimators.rebar, {"eta": 0.6, "temperature": 2.0}),
    "rebar_untied": (estimators.rebar, {"tied": False, "temperature": 0.3}),
    "relax": (estimators.relax, {}),
}


# The estimators of 2019-2023, on half the problems (each pair compiles once):
# a quadratic form at |l| <= 4, D = 8 at |l| <= 4, and a sine at |l| <= 10.
FRONTIER_PROBLEMS = [PROBLEMS[1], PROBLEMS[3], PROBLEMS[5]]
FRONTIER_VARIANTS = {
    "arms_dirichlet_3": (estimators.arms, {"num_samples": 3}),
    "arms_gaussian_4": (estimators.arms, {"num_samples": 4,
                                          "copula": "gaussian"}),
    "double_cv_2": (estimators.double_cv, {}),
    "double_cv_3_alpha": (estimators.double_cv, {"num_samples": 3,
                                                 "alpha": -0.5}),
    "indecater": (estimators.indecater, {}),
    # a random surrogate network, both control variates switched on
    "rodeo_3_net": (estimators.rodeo, {
        "num_samples": 3, "cv_params": bernoulli.init_rodeo_params(
            jax.random.key(3), hidden=(16,), alpha=0.8, beta=0.5)}),
}


def _draws(est, logits, f, seed=11, n=NUM_DRAWS, **options):
  return testing.draws(est, jax.random.key(seed), logits, f, n, **options)


class UnbiasedTest(parameterized.TestCase):

  @parameterized.product(problem=PROBLEMS, variant=sorted(UNBIASED_VARIANTS))
  def test_mean_matches_exact_gradient(self, problem, variant):
    seed, dim, kind, scale = problem
    logits, f = _problem(seed, dim, kind, scale)
    est, options = UNBIASED_VARIANTS[variant]
    samples = _draws(est, logits, f, **options)
    testing.assert_unbiased(samples, exact.bernoulli_gradient(logits, f),
                            max_z=4.5, name=variant)

  @parameterized.product(problem=FRONTIER_PROBLEMS,
                         variant=sorted(FRONTIER_VARIANTS))
  def test_frontier_mean_matches_exact_gradient(self, problem, variant):
    logits, f = _problem(*problem)
    est, options = FRONTIER_VARIANTS[variant]
    samples = _draws(est, logits, f, n=2**16, **options)
    testing.assert_unbiased(samples, exact.bernoulli_gradient(logits, f),
                            max_z=4.5, name=variant)

  def test_relax_with_trained_network_is_unbiased(self):
    # The network trained as in scripts/toy.py and the trainer: Adam on the
    # variance gradient of the estimator's own draws (fixed keys). It must
    # lower the variance a lot and leave the mean exact.
    problem = (2, 5, "sine", 4.0)
    logits, f = _problem(*problem)
    initial, trained = _trained_relax(problem)
    draw = jax.jit(jax.vmap(
        lambda k, p: estimators.relax(k, logits, f, cv_params=p),
        in_axes=(0, None)))
    keys = jax.random.split(jax.random.key(5), NUM_DRAWS)
    samples = {name: np.concatenate([
        np.asarray(draw(keys[i:i + 2**15], p)) for i in range(0, NUM_DRAWS,
                                                              2**15)])
               for name, p in (("initial", initial), ("trained", trained))}
    var = {name: x.astype(np.float64).var(0).sum()
           for name, x in samples.items()}
    print("RELAX summed variance, initial vs trained network:", var)
    self.assertLess(var["trained"], 0.5 * var["initial"])
    target = exact.bernoulli_gradient(logits, f)
    for name, x in samples.items():
      testing.assert_unbiased(x, target, name=f"relax, {name} network")

  def test_rodeo_with_trained_surrogate_is_unbiased(self):
    # (alpha, beta, net) trained on the estimator's own variance, as the
    # trainer does (`protocol.rodeo`): far below leave-one-out's variance on
    # the same samples, and still exact in the mean.
    logits, f = _problem(3, 8, "softplus", 4.0)
    initial = bernoulli.init_rodeo_params(jax.random.key(7), hidden=(16,))
    trained = _trained(
        lambda k, p: estimators.rodeo(k, logits, f, cv_params=p), initial)
    self.assertNotEqual(float(trained.beta), 0.0)
    samples = _draws(estimators.rodeo, logits, f, n=2**16, cv_params=trained)
    loo = _draws(estimators.reinforce_loo, logits, f, n=2**16)
    var = samples.astype(np.float64).var(0).sum()
    var_loo = loo.astype(np.float64).var(0).sum()
    print(f"RODEO trained vs leave-one-out summed variance: {var:.4g} vs "
          f"{var_loo:.4g}")
    self.assertLess(var, 0.5 * var_loo)
    testing.assert_unbiased(samples, exact.bernoulli_gradient(logits, f),
                            name="rodeo, trained")

  def test_every_registered_unbiased_estimator_is_tested(self):
    tested = {est for est, _ in UNBIASED_VARIANTS.values()}
    tested |= {est for est, _ in FRONTIER_VARIANTS.values()}
    for name in estimators.UNBIASED:
      self.assertIn(estimators.BERNOULLI[name], tested, name)

  @pytest.mark.optimized  # every unbiased estimator as users compile it
  def test_multidimensional_logits(self):
    logits = jnp.array([[0.5, -1.0, 2.0], [1.5, -0.2, 0.0]])
    f = lambda b: jnp.sum(b[0] * b[1]) + jnp.sin(jnp.sum(b * logits))
    target = exact.bernoulli_gradient(logits, f)
    for name in sorted(estimators.UNBIASED):
      samples = _draws(estimators.BERNOULLI[name], logits, f, n=2**16)
      self.assertEqual(samples.shape[1:], logits.shape)
      testing.assert_unbiased(samples, target, name=name)


def _trained(draw, params, steps=400, batch=8):
  """params trained by Adam (1e-2) on the variance gradient of draw(key, params).

  As the trainer does: `control_variates.variance_gradient` averaged over
  `batch` draws per step, `steps` steps, fixed keys.
  """
  opt = optax.adam(1e-2)

  def step(carry, key):
    params, opt_state = carry
    _, grads = jax.vmap(lambda k: control_variates.variance_gradient(
        lambda p: draw(k, p), params))(jax.random.split(key, batch))
    grads = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
    updates, opt_state = opt.update(grads, opt_state)
    return (optax.apply_updates(params, updates), opt_state), None

  (trained, _), _ = jax.jit(lambda k: jax.lax.scan(
      step, (params, opt.init(params)), jax.random.split(k, steps)))(
          jax.random.key(11))
  return trained


def _trained_relax(problem, steps=400, batch=8):
  """(initial, trained) RelaxParams of an MLP (16 hidden units) for `problem`.

  Trained as scripts/toy.py and the trainer do: Adam (learning rate 1e-2) on
  `control_variates.variance_gradient` of the estimator's own draws, averaged
  over `batch` draws per step, `steps` steps, fixed keys.
  """
  seed, dim, kind, scale = problem
  logits, f = _problem(seed, dim, kind, scale)
  initial = bernoulli.init_relax_params(jax.random.key(7), dim, hidden=(16,))
  return initial, _trained(
      lambda k, p: estimators.relax(k, logits, f, cv_params=p), initial,
      steps, batch)


class BiasedTest(parameterized.TestCase):

  @parameterized.parameters("concrete", "straight_through",
                            "straight_through_gumbel", "reinmax")
  def test_relaxed_estimators_are_biased(self, name):
    logits, f = _problem(2, 5, "sine", 4.0)
    samples = _draws(estimators.BERNOULLI[name], logits, f, n=2**16)
    testing.assert_biased(samples, exact.bernoulli_gradient(logits, f),
                          min_z=10.0, name=name)
    self.assertNotIn(name, estimators.UNBIASED)

  def test_reinmax_is_exact_to_second_order(self):
    # Heun's method: at lambda = 1, E[pi_1 (1 - pi_1) | b_-d] = 3/4 p (1 - p)
    # makes ReinMax unbiased for every f of degree <= 2 in b (a quadratic
    # form with all pairs interacting); straight-through is not.
    logits, f = _problem(1, 3, "quadratic", 4.0)
    target = exact.bernoulli_gradient(logits, f)
    testing.assert_unbiased(_draws(estimators.reinmax, logits, f, n=2**16),
                            target, name="reinmax on a quadratic")
    testing.assert_biased(_draws(estimators.straight_through, logits, f,
                                 n=2**16), target, min_z=10.0,
                          name="straight_through on a quadratic")

  @parameterized.parameters((2, 5, "sine", 3.0), (3, 5, "softplus", 3.0))
  def test_concrete_bias_shrinks_with_temperature(self, seed, dim, kind, scale):
    # The relaxed objective E[f(sigma_lambda(z))] tends to E[f(b)] as
    # lambda -> 0; the decrease is not monotone at every step for every f, but
    # it is over factors of 4-5 in temperature.
    logits, f = _problem(seed, dim, kind, scale)
    target = np.asarray(exact.bernoulli_gradient(logits, f), np.float64)
    biases, errors = [], []
    for temperature in (2.0, 0.5, 0.1):
      samples = _draws(estimators.concrete, logits, f, n=2**18,
                       temperature=temperature).astype(np.float64)
      mean = samples.mean(axis=0)
      se = samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])
      biases.append(np.linalg.norm(mean - target))
      errors.append(np.linalg.norm(se))
    for i in range(len(biases) - 1):
      # Each drop is larger than 4 standard errors of the two estimates.
      self.assertGreater(biases[i] - biases[i + 1],
                         4 * (errors[i] + errors[i + 1]), (biases, errors))


class CrossCheckTest(parameterized.TestCase):

  @parameterized.parameters(*PROBLEMS[:4])
  def test_rebar_with_zero_eta_is_reinforce_draw_for_draw(self, seed, dim,
                                                           kind, scale):
    logits, f = _problem(seed, dim, kind, scale)
    keys = jax.random.split(jax.random.key(seed), 512)
    rebar = jax.vmap(lambda k: estimators.rebar(k, logits, f, eta=0.0))(keys)
    reinforce = jax.vmap(lambda k: estimators.reinforce(k, logits, f))(keys)
    np.testing.assert_array_equal(np.asarray(rebar), np.asarray(reinforce))

  @parameterized.product(problem=PROBLEMS[1:4:2], copula=("dirichlet",
                                                          "gaussian"))
  def test_arms_with_two_samples_is_disarm_draw_for_draw(self, problem,
                                                         copula):
    # Both copulas give the antithetic pair u_2 = 1 - u_1 at K = 2, and
    # 1 / (1 - rho) = sigmoid(|l|), DisARM's factor.
    logits, f = _problem(*problem)
    keys = jax.random.split(jax.random.key(3), 4096)
    arms = jax.vmap(lambda k: estimators.arms(k, logits, f, copula=copula))
    disarm = jax.vmap(lambda k: estimators.disarm(k, logits, f))
    np.testing.assert_allclose(arms(keys), disarm(keys), rtol=2e-5,
                               atol=1e-6)

  def test_loo_special_cases_draw_for_draw(self):
    # ARMS with independent samples (rho = 0) and double CV with alpha = 0
    # are the leave-one-out estimator on the same samples.
    logits, f = _problem(3, 8, "softplus", 4.0)
    keys = jax.random.split(jax.random.key(4), 1024)
    draw = lambda est, **kw: jax.vmap(lambda k: est(k, logits, f, **kw))(keys)
    loo = draw(estimators.reinforce_loo, num_samples=3)
    np.testing.assert_array_equal(
        draw(estimators.arms, num_samples=3, copula="independent"), loo)
    np.testing.assert_allclose(
        draw(estimators.double_cv, num_samples=3, alpha=0.0), loo,
        rtol=1e-5, atol=1e-6)

  @parameterized.product(copula=("dirichlet", "gaussian"), num_samples=(3, 5))
  def test_copula_samples_have_the_marginal_and_correlation(self, copula,
                                                            num_samples):
    # The conditional construction of u_2..u_K given the chain's u_1 must
    # give Bernoulli(p) marginals and the pairwise correlation rho(p) that
    # ARMS divides by.
    logits = jnp.array([-6.0, -1.5, -0.2, 0.0, 0.9, 3.0])
    n = 2**17
    keys = jax.random.split(jax.random.key(5), n)

    def samples(key):
      noise, key_rest = bernoulli.noise_and_spare_key(key, logits.shape,
                                                       jnp.float32)
      c = copulas.rest(copula, key_rest, logits,
                       copulas.first_noise(logits, noise), num_samples)
      b_1 = bernoulli.sample_from_noise(logits, noise)
      return jnp.concatenate(
          [b_1[None], jnp.where(logits >= 0, 1.0 - c, c)])

    b = np.asarray(jax.jit(jax.vmap(samples))(keys), np.float64)  # (n, K, D)
    p = np.asarray(jax.nn.sigmoid(logits), np.float64)
    se_p = np.sqrt(p * (1 - p) / n)
    for k in range(num_samples):
      np.testing.assert_array_less(np.abs(b[:, k].mean(0) - p), 4.5 * se_p)
    both = b[:, 0] * b[:, 1]  # b_1 (the chain's) and b_2 (the copula's)
    rho = np.asarray(copulas.rho(copula, logits, num_samples), np.float64)
    expected = rho * p * (1 - p) + p * p
    se = np.sqrt(expected * (1 - expected) / n)  # binomial, from the claim
    np.testing.assert_array_less(np.abs(both.mean(0) - expected), 4.5 * se)

  @parameterized.parameters(2, 3, 6)
  def test_copula_correlation_against_closed_forms(self, num_samples):
    logits = jnp.array([-12.0, -4.0, -1.0, -0.1, 0.0, 0.5, 2.0, 9.0])
    p = np.asarray(jax.nn.sigmoid(-jnp.abs(logits)), np.float64)
    m = num_samples - 1
    a = 1.0 - (1.0 - p) ** (1.0 / m)
    p11 = 2 * p - 1 + np.maximum(1 - 2 * a, 0.0) ** m
    np.testing.assert_allclose(copulas.dirichlet_rho(logits, num_samples),
                               (p11 - p * p) / (p * (1 - p)), rtol=2e-5,
                               atol=1e-7)
    r = -1.0 / m
    h = scipy.stats.norm.ppf(p)
    p11 = np.array([scipy.stats.multivariate_normal(
        [0.0, 0.0], [[1.0, r], [r, 1.0]]).cdf([x, x]) if m > 1
                    else max(2 * q - 1, 0.0) for x, q in zip(h, p)])
    np.testing.assert_allclose(copulas.gaussian_rho(logits, num_samples),
                               (p11 - p * p) / (p * (1 - p)), rtol=1e-4,
                               atol=1e-6)

  def test_arms_variance_falls_below_loo(self):
    # Antithetic samples at the same number of evaluations (K = 4).
    logits, f = _problem(3, 8, "softplus", 4.0)
    var = {name: _draws(est, logits, f, n=2**15, num_samples=4, **kw
                        ).var(0).sum()
           for name, est, kw in (
               ("loo", estimators.reinforce_loo, {}),
               ("arms_dirichlet", estimators.arms, {}),
               ("arms_gaussian", estimators.arms, {"copula": "gaussian"}))}
    self.assertLess(var["arms_dirichlet"], var["loo"], var)
    self.assertLess(var["arms_gaussian"], var["loo"], var)

  def test_indecater_is_exact_for_a_linear_f(self):
    # One coordinate at a time is summed exactly; for f linear the others
    # do not matter, so every draw is the gradient.
    logits = jnp.array([-7.0, -1.0, 0.3, 2.0, 9.0])
    w = jnp.array([0.5, -2.0, 1.0, 3.0, -1.5])
    f = lambda b: w @ b + 0.25
    draws = _draws(estimators.indecater, logits, f, n=1024)
    np.testing.assert_allclose(
        draws, np.broadcast_to(exact.bernoulli_gradient(logits, f),
                               draws.shape), rtol=1e-5, atol=1e-7)

  def test_arm_disarm_reinforce_share_a_mean_beyond_enumeration(self):
    # D = 24: 2^24 states, too many to enumerate; compare the estimators.
    logits, f = _problem(8, 24, "quadratic", 3.0)
    means, ses = {}, {}
    for i, name in enumerate(("reinforce", "arm", "disarm")):
      samples = _draws(estimators.BERNOULLI[name], logits, f, seed=100 + i,
                       n=2**16).astype(np.float64)
      means[name] = samples.mean(0)
      ses[name] = samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
    for a, b in (("arm", "reinforce"), ("disarm", "reinforce"),
                 ("disarm", "arm")):
      z = np.abs(means[a] - means[b]) / np.sqrt(ses[a] ** 2 + ses[b] ** 2)
      self.assertLessEqual(z.max(), 4.5, (a, b, z))

  @parameterized.parameters(*PROBLEMS)
  def test_disarm_variance_at_most_arm(self, seed, dim, kind, scale):
    logits, f = _problem(seed, dim, kind, scale)
    # Same keys: DisARM is ARM averaged over the augmentation given (b, b~).
    var_arm = _draws(estimators.arm, logits, f, n=2**16).var(0)
    var_disarm = _draws(estimators.disarm, logits, f, n=2**16).var(0)
    np.testing.assert_array_less(var_disarm, 1.02 * var_arm + 1e-12)
    self.assertLess(var_disarm.sum(), var_arm.sum())

  def test_loo_and_rebar_reduce_variance_versus_reinforce(self):
    logits, f = _problem(3, 8, "softplus", 4.0)
    var = {name: _draws(estimators.BERNOULLI[name], logits, f, n=2**15
                        ).var(0).sum()
           for name in ("reinforce", "reinforce_loo", "rebar")}
    self.assertLess(var["reinforce_loo"], var["reinforce"])
    self.assertLess(var["rebar"], var["reinforce"])


ALL = sorted(estimators.BERNOULLI)


class NumericsTest(parameterized.TestCase):

  @parameterized.parameters(*ALL)
  def test_finite_for_extreme_logits(self, name):
    logits = jnp.linspace(-30.0, 30.0, 13)
    f = lambda b: jnp.sum((b - 0.45) ** 2) + jnp.sin(jnp.sum(b))
    samples = _draws(estimators.BERNOULLI[name], logits, f, n=4096)
    self.assertTrue(np.all(np.isfinite(samples)), name)

  @parameterized.parameters(*ALL)
  def test_finite_for_noise_at_the_edges(self, name):
    # Replace every draw of u = (w, side) by the edges of its range (u from
    # 2^-126 to 1/2 - 2^-25 and from 1/2 + 2^-25 to 1 - 2^-126), crossed with
    # extreme logits: every (u, logit) pair appears.
    w_edges = np.array([2.0**-126, 1e-30, 1e-7, 0.25, 0.5 - 2.0**-25],
                       np.float32)
    w_edges = np.concatenate([w_edges, w_edges])
    sides = np.repeat([False, True], 5)
    logit_values = np.array([-80.0, -30.0, -10.0, 0.0, 10.0, 30.0, 80.0],
                            np.float32)
    w = jnp.asarray(np.repeat(w_edges, len(logit_values)))
    side = jnp.asarray(np.repeat(sides, len(logit_values)))
    logits = jnp.asarray(np.tile(logit_values, len(w_edges)))
    f = lambda b: jnp.sum((b - 0.45) ** 2) + jnp.sin(jnp.sum(b))
    with pytest.MonkeyPatch.context() as mp:
      mp.setattr(noise_lib, "uniform_halves",
                 lambda key, shape: (w.reshape(shape), side.reshape(shape)))
      grad = estimators.BERNOULLI[name](jax.random.key(0), logits, f)
      if name == "rebar":  # the untied conditional noise too
        grad = grad + estimators.rebar(jax.random.key(0), logits, f,
                                       tied=False)
    self.assertTrue(np.all(np.isfinite(np.asarray(grad))), (name, grad))

  @parameterized.parameters(*ALL)
  def test_non_finite_logits_give_an_all_nan_estimate(self, name):
    logits, f = _problem(1, 3, "quadratic", 4.0)
    est = estimators.BERNOULLI[name]
    key = jax.random.key(0)
    # Eager (a NaN; +-inf below).
    out = est(key, logits.at[1].set(np.nan), f)
    self.assertEqual(out.shape, logits.shape)
    self.assertTrue(np.all(np.isnan(out)), (name, out))
    # Jitted and vmapped: only the members with a non-finite logit are NaN.
    batch = jnp.stack([logits, logits.at[0].set(np.nan),
                       logits.at[1].set(np.inf), logits.at[2].set(-np.inf)])
    out = jax.jit(jax.vmap(lambda l: est(key, l, f)))(batch)
    self.assertTrue(np.all(np.isfinite(out[0])), (name, out))
    self.assertTrue(np.all(np.isnan(out[1:])), (name, out))

  def test_non_finite_logits_in_rebar_terms(self):
    logits, f = _problem(1, 3, "quadratic", 4.0)
    r, h = estimators.rebar_terms(jax.random.key(0), logits.at[2].set(np.inf),
                                  f)
    self.assertTrue(np.all(np.isnan(r)) and np.all(np.isnan(h)))

  def test_conditional_sample_has_the_right_value_and_sign(self):
    tiny = np.finfo(np.float32).tiny
    u = jnp.array([tiny, 1e-7, 0.3, 0.5, 0.9, 1 - 2**-24])
    for l in (-30.0, -3.0, 0.0, 3.0, 30.0):
      logits = jnp.full(u.shape, l)
      z = bernoulli.reparameterize(logits, u)
      b = bernoulli.hard_threshold(z)
      z_tied = bernoulli.conditional_from_noise(
          logits, b, bernoulli.tied_noise(logits, z, b))
      np.testing.assert_allclose(z_tied, z, rtol=1e-5, atol=1e-5)
      for v in (tiny, 0.5, 1 - 2**-24):
        zt = bernoulli.conditional_reparameterize(logits, b, jnp.full(u.shape, v))
        self.assertTrue(np.all(np.isfinite(zt)))
        # z~ lies on the side of 0 that b says (0 itself where v underflows).
        self.assertTrue(np.all(zt * (2 * b - 1) >= 0), (l, v, zt, b))
      grad = jax.grad(lambda x: jnp.sum(jax.nn.sigmoid(
          bernoulli.conditional_from_noise(
              x, b, bernoulli.tied_noise(x, z, b)) / 0.5)))(logits)
      self.assertTrue(np.all(np.isfinite(grad)), (l, grad))

  def test_conditional_distribution_matches_truncated_logistic(self):
    # z~ given b = 1 is the logistic(l) law truncated to z >= 0:
    # P(z~ <= t | b = 1) = (F(t) - F(0)) / (1 - F(0)), F the logistic CDF.
    # v from the estimators' own noise (logit v), as REBAR's untied path.
    l, t = 0.7, 1.3
    logit_v = noise_lib.logistic_noise(jax.random.key(3), (200_000,))
    zt = bernoulli.conditional_from_logit(jnp.full(logit_v.shape, l),
                                          jnp.ones(logit_v.shape), logit_v)
    cdf = lambda x: 1 / (1 + np.exp(-(x - l)))
    expected = (cdf(t) - cdf(0)) / (1 - cdf(0))
    self.assertAlmostEqual(float(np.mean(zt <= t)), expected, delta=0.005)


class OracleTest(parameterized.TestCase):

  @parameterized.parameters(8, 12, 16)
  def test_exact_gradient_is_unmoved_by_a_large_offset_in_f(self, dim):
    # d/dl E[f + c] = d/dl E[f]. Summed in float32 over the 2^D states, an
    # offset c = 1e4 moved the gradient by ~0.1-0.2% (relative, in norm) at
    # D = 8..16; the float64 sums keep it at float32 rounding.
    logits, f = _problem(dim, dim, "quadratic", 4.0)
    grad = np.asarray(exact.bernoulli_gradient(logits, f), np.float64)
    offset = np.asarray(exact.bernoulli_gradient(logits, lambda b: f(b) + 1e4),
                        np.float64)
    error = np.linalg.norm(offset - grad) / np.linalg.norm(grad)
    print(f"D={dim}: relative change from the offset {error:.2e}")
    self.assertLess(error, 1e-6)
    self.assertEqual(exact.bernoulli_gradient(logits, f).dtype, jnp.float32)


class JitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*ALL)
  def test_jit_and_eager_agree(self, name):
    logits, f = _problem(1, 3, "quadratic", 4.0)
    est = estimators.BERNOULLI[name]
    fn = self.variant(lambda k, l: est(k, l, f))
    # The reference runs eagerly, op by op, with every jit disabled.
    with jax.disable_jit():
      reference = est(jax.random.key(5), logits, f)
    np.testing.assert_allclose(fn(jax.random.key(5), logits), reference,
                               rtol=1e-5, atol=1e-6)

  def test_works_with_legacy_uint32_keys_and_vmap(self):
    logits, f = _problem(1, 3, "quadratic", 4.0)
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    out = jax.vmap(estimators.rebar, in_axes=(0, None, None))(keys, logits, f)
    self.assertEqual(out.shape, (4, 3))


class ErrorsTest(parameterized.TestCase):

  def test_unknown_estimator_name_lists_the_choices(self):
    with self.assertRaisesRegex(ValueError, "disarm.*rebar"):
      estimators.get("rebbar")

  @parameterized.parameters("concrete", "straight_through_gumbel", "rebar",
                            "reinmax")
  def test_non_positive_temperature(self, name):
    with self.assertRaisesRegex(ValueError, "temperature must be > 0"):
      estimators.BERNOULLI[name](jax.random.key(0), jnp.zeros(3),
                                 jnp.sum, temperature=0.0)

  @parameterized.parameters(*ALL)
  def test_non_scalar_f(self, name):
    # The check is made when f is called, eagerly or while tracing: traced
    # here (no compiling), eagerly once in test_non_scalar_f_eagerly.
    with self.assertRaisesRegex(ValueError, "must return a scalar"):
      jax.eval_shape(lambda: estimators.BERNOULLI[name](
          jax.random.key(0), jnp.zeros(3), lambda b: b))

  def test_non_scalar_f_eagerly(self):
    with self.assertRaisesRegex(ValueError, "must return a scalar"):
      estimators.disarm(jax.random.key(0), jnp.zeros(3), lambda b: b)

  @parameterized.parameters(*ALL)
  def test_key_that_is_not_a_key(self, name):
    with self.assertRaisesRegex(TypeError, "PRNG key"):
      estimators.BERNOULLI[name](0, jnp.zeros(3), jnp.sum)
    with self.assertRaisesRegex(TypeError, "single PRNG key"):
      estimators.BERNOULLI[name](jax.random.split(jax.random.key(0), 3),
                                 jnp.zeros(3), jnp.sum)

  def test_integer_logits_and_bad_num_samples(self):
    with self.assertRaisesRegex(TypeError, "floating-point"):
      estimators.reinforce(jax.random.key(0), jnp.zeros(3, jnp.int32), jnp.sum)
    for est in (estimators.reinforce_loo, estimators.arms,
                estimators.double_cv):
      with self.assertRaisesRegex(ValueError, "num_samples"):
        est(jax.random.key(0), jnp.zeros(3), jnp.sum, num_samples=1)
    with self.assertRaisesRegex(ValueError, "num_samples"):
      estimators.indecater(jax.random.key(0), jnp.zeros(3), jnp.sum,
                           num_samples=0)
    with self.assertRaisesRegex(ValueError, "copula.*gaussian"):
      estimators.arms(jax.random.key(0), jnp.zeros(3), jnp.sum,
                      copula="clayton")

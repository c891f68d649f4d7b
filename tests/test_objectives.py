"""Proofs of the bounds against exact log p(x) on models small enough to
enumerate: E[ELBO] = E[IW_1] <= E[IW_10] <= E[IW_100] <= log p(x); chunking,
memory and the evaluation loop."""
import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from rebar_jax import models
from rebar_jax import objectives
from rebar_jax import testing
from tiny_models import all_latents
from tiny_models import binary_states

D = 6


MODELS = {
    "sbn_linear_1": models.SBN(num_layers=1, num_latents=4, data_dim=D),
    "sbn_nonlinear_2": models.SBN(num_layers=2, num_latents=3, nonlinear=True,
                                  hidden=5, data_dim=D),
    "vae": models.CategoricalVAE(num_vars=2, num_classes=3, hidden=(8,),
                                 data_dim=D, learned_prior=True),
}
NAMES = tuple((n, n) for n in MODELS)
# The two models of the bound proofs (2^4 and 3^2 latent states); the two-layer
# SBN joins the exact-ELBO check, its log q / log p are proven in test_models.
BOUND_NAMES = (("sbn_linear_1", "sbn_linear_1"), ("vae", "vae"))

# The tests compile many small programs once each: XLA's backend optimisation
# costs more time than it saves here (about 2x faster compiles).
jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0})
XS = jnp.asarray(binary_states(D)[::4])  # 16 data points


@functools.lru_cache(maxsize=None)
def tiny(name):
  """A tiny model with parameters redrawn as 0.5 N(0, 1): the posterior is far
  from q (KL gaps of 0.2 to 3.5 nats), yet IW_5000 still converges."""
  model = MODELS[name]
  latents = jax.tree_util.tree_map(lambda b: b[0], all_latents(model))

  @jit
  def make(key):
    params = model.init(key, jnp.zeros(D), latents)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [0.5 * jax.random.normal(k, l.shape)
               for k, l in zip(keys, leaves)])

  return model, make(jax.random.key(0))


@functools.lru_cache(maxsize=None)
def _jit_apply(model):
  return jit(model.apply)


def exact(model, params, xs):
  """Per data point, by enumeration: log p(x); E_q[log w] and Var_q[log w]
  (w = p(x, b) / q(b | x)); and r = Var_q[w / p(x)], the relative variance of
  the importance weights (IW_K ~ log p(x) + N(-r / 2K, r / K) for large K)."""
  latents = all_latents(model)
  s = jax.tree_util.tree_leaves(latents)[0].shape[0]
  n = xs.shape[0]
  grid_x = jnp.broadcast_to(xs[:, None], (n, s, D))
  grid_b = jax.tree_util.tree_map(
      lambda b: jnp.broadcast_to(b, (n,) + b.shape), latents)
  log_p, log_q = _jit_apply(model)(params, grid_x, grid_b)
  log_p, log_q = np.asarray(log_p, np.float64), np.asarray(log_q, np.float64)
  log_px = np.log(np.sum(np.exp(log_p), axis=1))
  q, lw = np.exp(log_q), log_p - log_q
  mean = np.sum(q * lw, axis=1)
  var = np.sum(q * (lw - mean[:, None])**2, axis=1)
  r = np.sum(q * np.exp(2 * (lw - log_px[:, None])), axis=1) - 1.0
  return log_px, mean, var, r


NUM_DRAWS = 4096      # independent draws of the ELBO and IW_1 per point
NUM_DRAWS_IW = 512    # of IW_10 and IW_100
K_LARGE = 5000        # one draw of IW_5000, chunks of 500


@functools.lru_cache(maxsize=None)
def bound_draws(name):
  """Draws of every bound on the 16 points XS, computed under one jit."""
  model, params = tiny(name)

  def all_draws(key):
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    many = lambda fn, k, n: jax.vmap(fn)(jax.random.split(k, n))
    iw = lambda num, chunk: lambda k: objectives.iw_bound(
        model, params, XS, k, num, chunk)
    return {
        "elbo": many(lambda k: objectives.elbo(model, params, XS, k), k1,
                     NUM_DRAWS),
        "iw1": many(iw(1, 100), k2, NUM_DRAWS),
        "iw10": many(iw(10, 100), k3, NUM_DRAWS_IW),
        "iw100": many(iw(100, 50), k4, NUM_DRAWS_IW),
        "iw5000": iw(K_LARGE, 500)(k5),
    }

  out = jit(all_draws)(jax.random.key(7))
  return {k: np.asarray(v, np.float64) for k, v in out.items()}


class BoundsTest(parameterized.TestCase):
  """E[ELBO] = E[IW_1] < E[IW_10] < E[IW_100] <= log p(x) = lim IW_K."""

  @parameterized.named_parameters(*NAMES)
  def test_exact_elbo_below_log_px(self, name):
    model, params = tiny(name)
    log_px, elbo, _, _ = exact(model, params, XS)
    self.assertTrue(np.all(log_px <= 0.0))
    gap = log_px - elbo  # = KL(q(b|x) || p(b|x)) >= 0
    self.assertGreater(float(np.min(gap)), 1e-2, msg=f"gaps {gap}")

  @parameterized.named_parameters(*BOUND_NAMES)
  def test_elbo_and_iw1_unbiased_for_exact_elbo(self, name):
    model, params = tiny(name)
    _, elbo, _, _ = exact(model, params, XS)
    d = bound_draws(name)
    chex.assert_shape(d["elbo"], (NUM_DRAWS, XS.shape[0]))
    testing.assert_unbiased(d["elbo"], elbo, name="elbo")
    testing.assert_unbiased(d["iw1"], elbo, name="iw_bound K=1")

  @parameterized.named_parameters(*BOUND_NAMES)
  def test_iw_rises_with_k_below_log_px(self, name):
    model, params = tiny(name)
    log_px, elbo, _, _ = exact(model, params, XS)
    d = bound_draws(name)
    # mean over the 16 points of each independent draw
    draws = [d[k].mean(axis=1) for k in ("iw1", "iw10", "iw100")]
    means = np.array([w.mean() for w in draws])
    ses = np.array([w.std(ddof=1) / np.sqrt(len(w)) for w in draws])
    msg = (f"E[IW_K] {means} +- {ses}, ELBO {elbo.mean()}, "
           f"log p(x) {log_px.mean()}")
    for i in (0, 1):  # strictly rising, by more than 4.5 standard errors
      self.assertGreater(means[i + 1] - means[i],
                         4.5 * np.hypot(ses[i], ses[i + 1]), msg)
    self.assertLess(means[2], log_px.mean() + 4.5 * ses[2], msg)
    # per point too: E[IW_100] <= log p(x)
    w100 = d["iw100"]
    se100 = w100.std(axis=0, ddof=1) / np.sqrt(len(w100))
    np.testing.assert_array_less(w100.mean(axis=0), log_px + 4.5 * se100)

  @parameterized.named_parameters(*BOUND_NAMES)
  def test_iw_converges_to_log_px(self, name):
    """IW_5000 within 5 standard deviations of log p(x), with the sd sqrt(r/K)
    and the bias r/2K of the delta method from the exact relative variance r."""
    model, params = tiny(name)
    log_px, elbo, _, r = exact(model, params, XS)
    tol = 5 * np.sqrt(r / K_LARGE) + r / (2 * K_LARGE)
    # the test has teeth: the tolerance is far below the ELBO's gap
    np.testing.assert_array_less(tol, 0.5 * (log_px - elbo) + 0.05)
    np.testing.assert_array_less(
        np.abs(bound_draws(name)["iw5000"] - log_px), tol)


class IwBoundTest(parameterized.TestCase):

  def test_chunking_does_not_change_the_value(self):
    model, params = tiny("sbn_linear_1")
    key = jax.random.key(11)
    ref = jit(lambda k: objectives.iw_bound(
        model, params, XS, k, 100, chunk_size=100))(key)
    chex.assert_shape(ref, (XS.shape[0],))
    for chunk in (10, 7):  # 7 leaves a remainder of 2
      out = jit(lambda k, c=chunk: objectives.iw_bound(
          model, params, XS, k, 100, chunk_size=c))(key)
      np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-5,
                                 err_msg=f"chunk_size={chunk}")

  def test_single_point_and_leading_shapes(self):
    model, params = tiny("vae")
    shapes = jax.eval_shape(lambda k: (
        objectives.iw_bound(model, params, XS[0], k, 5),
        objectives.elbo(model, params, XS[:4].reshape(2, 2, D), k),
        objectives.iw_bound(model, params, XS[:4].reshape(2, 2, D), k, 5)),
                            jax.random.key(0))
    self.assertEqual([s.shape for s in shapes], [(), (2, 2), (2, 2)])

  def test_memory_is_per_chunk(self):
    """No intermediate holds K x batch values: the scan holds one chunk."""
    model, params = tiny("sbn_linear_1")
    k_samples, chunk, batch = 2000, 10, XS.shape[0]
    jaxpr = jax.make_jaxpr(lambda k: objectives.iw_bound(
        model, params, XS, k, k_samples, chunk_size=chunk))(jax.random.key(0))

    def avals(jaxpr):
      for eqn in jaxpr.eqns:
        yield from (v.aval for v in eqn.outvars)
        for p in eqn.params.values():
          sub = getattr(p, "jaxpr", p)
          if hasattr(sub, "eqns"):
            yield from avals(sub)

    sizes = [int(np.prod(a.shape)) for a in avals(jaxpr.jaxpr)
             if hasattr(a, "shape") and jnp.issubdtype(a.dtype, jnp.floating)]
    self.assertLessEqual(max(sizes), chunk * batch * D)
    self.assertIn("scan", str(jaxpr))

  @parameterized.parameters(
      dict(num_samples=0), dict(num_samples=2.5), dict(chunk_size=0),
      dict(chunk_size=-3))
  def test_invalid_arguments(self, num_samples=10, chunk_size=5):
    model, params = tiny("sbn_linear_1")
    with self.assertRaises(ValueError):
      objectives.iw_bound(model, params, XS, jax.random.key(0), num_samples,
                          chunk_size)

  def test_wrong_data_dim(self):
    model, params = tiny("sbn_linear_1")
    with self.assertRaises(AssertionError):
      objectives.elbo(model, params, jnp.zeros((3, D + 1)), jax.random.key(0))


class EvaluateTest(absltest.TestCase):

  def test_independent_of_batch_size_and_deterministic(self):
    model, params = tiny("sbn_linear_1")
    data = binary_states(D)[::5]  # 13 points
    key = jax.random.key(5)
    ref = objectives.evaluate(model, params, data, key, num_samples=20,
                              batch_size=13)
    self.assertEqual(set(ref), {"elbo", "iw_bound"})
    self.assertIsInstance(ref["elbo"], float)
    self.assertLess(ref["elbo"], ref["iw_bound"])
    for batch_size, chunk in ((4, 7),):  # padding, and a remainder chunk
      out = objectives.evaluate(model, params, data, key, num_samples=20,
                                batch_size=batch_size, chunk_size=chunk)
      for name in ("elbo", "iw_bound"):
        np.testing.assert_allclose(out[name], ref[name], rtol=1e-5,
                                   err_msg=f"{name}, batch {batch_size}")
    again = objectives.evaluate(model, params, data, key, num_samples=20,
                                batch_size=13)
    self.assertEqual(again, ref)
    other = objectives.evaluate(model, params, data, jax.random.key(6),
                                num_samples=20, batch_size=13)
    self.assertNotEqual(other["elbo"], ref["elbo"])

  def test_matches_exact_values(self):
    model, params = tiny("vae")
    data = np.asarray(binary_states(D))  # all 64 points
    log_px, elbo, var, r = exact(model, params, jnp.asarray(data))
    k_samples = 2000
    out = objectives.evaluate(model, params, data, jax.random.key(0),
                              num_samples=k_samples, batch_size=32)
    n = len(data)
    se = np.sqrt(var.sum()) / n
    self.assertLess(abs(out["elbo"] - elbo.mean()), 4.5 * se)
    # IW_K ~ log p(x) + N(-r / 2K, r / K), averaged over the n points
    se_iw = np.sqrt(np.sum(r / k_samples)) / n
    bias = np.mean(r / (2 * k_samples))
    self.assertLess(abs(out["iw_bound"] + bias - log_px.mean()),
                    4.5 * se_iw + bias)
    self.assertGreater(log_px.mean() - elbo.mean(), 0.5)

  def test_dynamic_binarization(self):
    model, params = tiny("sbn_linear_1")
    key = jax.random.key(2)
    # same static arguments as the batch-size test: its compilations are reused
    evaluate = lambda data, dyn: objectives.evaluate(
        model, params, data, key, 20, 13, dynamic_binarization=dyn)
    binary = binary_states(D)[::3]  # 22 points, as bool
    # binary data are fixed points of binarisation
    self.assertEqual(evaluate(binary > 0.5, True), evaluate(binary, False))
    probs = np.random.default_rng(0).uniform(size=(300, D)).astype(np.float32)
    dyn, raw = evaluate(probs, True), evaluate(probs, False)
    self.assertNotAlmostEqual(dyn["elbo"], raw["elbo"], places=3)
    # binarised with a fixed key: repeatable
    self.assertEqual(dyn, evaluate(probs, True))


if __name__ == "__main__":
  absltest.main()

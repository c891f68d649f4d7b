"""Tests of the SBN and categorical VAE: exact normalisation by enumeration,
sampling against log q, relaxed inputs, batching, parameter counts, init."""
import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rebar_jax import gradients
from rebar_jax import models
from rebar_jax.models import categorical_vae
from rebar_jax.models import protocol
from rebar_jax.models import sbn
from tiny_models import all_latents

from examples import custom_model

D_TINY = 6
X_ALL = jnp.asarray(
    ((np.arange(2**D_TINY)[:, None] >> np.arange(D_TINY)) & 1), jnp.float32)

# The tests compile many small programs once each: XLA's backend optimisation
# costs more time than it saves here (about 2x faster compiles).
jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def zero_latents(model, leading=()):
  if isinstance(model, models.SBN):
    return tuple(jnp.zeros(leading + (model.num_latents,))
                 for _ in range(model.num_layers))
  return jnp.zeros(leading + (model.num_vars, model.num_classes))


def init(model, key, scale=None):
  """model.init (one jit); with `scale`, every parameter is then redrawn as
  scale * N(0, 1), far from the init, so posteriors are not trivial."""

  def make(key):
    params = model.init(key, jnp.zeros(model.data_dim), zero_latents(model))
    if scale is None:
      return params
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [scale * jax.random.normal(k, l.shape)
               for k, l in zip(keys, leaves)])

  return jit(make)(key)


def count(model):
  """Number of parameters, from shapes only (nothing is computed)."""
  return models.num_params(jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros(model.data_dim),
      zero_latents(model)))


def broadcast_latents(latents, leading):
  return jax.tree_util.tree_map(
      lambda b: jnp.broadcast_to(b, leading + b.shape[1:]), latents)


TINY_MODELS = {
    "sbn_linear_1": models.SBN(num_layers=1, num_latents=4, data_dim=D_TINY),
    "sbn_linear_2": models.SBN(num_layers=2, num_latents=3, data_dim=D_TINY),
    "sbn_nonlinear_2": models.SBN(num_layers=2, num_latents=3, nonlinear=True,
                                  hidden=5, data_dim=D_TINY),
    "vae_uniform": models.CategoricalVAE(num_vars=2, num_classes=3,
                                         hidden=(8, 7), data_dim=D_TINY),
    "vae_learned": models.CategoricalVAE(num_vars=2, num_classes=3,
                                         hidden=(8,), data_dim=D_TINY,
                                         learned_prior=True),
}
TINY = tuple((name, name) for name in TINY_MODELS)


@functools.lru_cache(maxsize=None)
def tiny(name):
  model = TINY_MODELS[name]
  return model, init(model, jax.random.key(0), scale=1.5)


@functools.lru_cache(maxsize=None)
def tables(name):
  """Enumerated log-probabilities, one jit: log q (X, S) for every x,
  log p(b) (S,), log p(x, b) (X, S); X = 2^6 data, S latent states."""
  model, params = tiny(name)
  latents = all_latents(model)
  s = jax.tree_util.tree_leaves(latents)[0].shape[0]
  n = X_ALL.shape[0]

  def make(params):
    grid_x = jnp.broadcast_to(X_ALL[:, None], (n, s, D_TINY))
    grid_b = broadcast_latents(latents, (n, s))
    log_p, log_q = model.apply(params, grid_x, grid_b)
    return log_q, model.apply(params, latents, method="log_prior"), log_p

  return tuple(np.asarray(t, np.float64) for t in jit(make)(params))


def dense(i, o):
  return i * o + o


class ParamCountTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("linear_1", 1, False, dense(784, 200) + dense(200, 784) + 200),
      ("linear_2", 2, False,
       dense(784, 200) + dense(200, 200) + dense(200, 784) + dense(200, 200)
       + 200),
      ("nonlinear_1", 1, True,
       dense(784, 200) + 2 * dense(200, 200)                    # encoder
       + 2 * dense(200, 200) + dense(200, 784) + 200),          # decoder, prior
  )
  def test_sbn(self, num_layers, nonlinear, expected):
    model = models.SBN(num_layers=num_layers, nonlinear=nonlinear)
    self.assertEqual(count(model), expected)

  def test_sbn_linear_1_value(self):
    self.assertEqual(count(models.SBN(num_layers=1)), 314_784)

  @parameterized.named_parameters(("uniform", False), ("learned", True))
  def test_categorical_vae(self, learned_prior):
    model = models.CategoricalVAE(learned_prior=learned_prior)
    expected = (dense(784, 512) + dense(512, 256) + dense(256, 300)
                + dense(300, 256) + dense(256, 512) + dense(512, 784)
                + (300 if learned_prior else 0))
    self.assertEqual(count(model), expected)


class NormalisationTest(parameterized.TestCase):
  """Enumerating every state: q(.|x), p(b), p(x|b) and p(x, b) sum to one."""

  @parameterized.named_parameters(*TINY)
  def test_q_sums_to_one_for_every_x(self, name):
    log_q, _, _ = tables(name)
    np.testing.assert_allclose(np.exp(log_q).sum(axis=1), 1.0, rtol=1e-5)

  @parameterized.named_parameters(*TINY)
  def test_prior_and_joint_sum_to_one(self, name):
    _, log_prior, log_p = tables(name)
    np.testing.assert_allclose(np.exp(log_prior).sum(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.exp(log_p).sum(), 1.0, rtol=1e-5)
    # sum_x p(x | b) = 1 for every b separately
    np.testing.assert_allclose(np.exp(log_p - log_prior).sum(axis=0), 1.0,
                               rtol=1e-5)

  def test_uniform_prior_value(self):
    _, log_prior, _ = tables("vae_uniform")
    np.testing.assert_allclose(log_prior, 2 * np.log(1 / 3), rtol=1e-6)


class SamplingTest(parameterized.TestCase):

  @parameterized.named_parameters(*TINY)
  def test_samples_follow_q(self, name):
    """Empirical state frequencies of sample_q match exp(log_q) (z < 5), and
    the returned log q is log q at the returned sample."""
    model, params = tiny(name)
    row, n = 37, 20_000
    x = X_ALL[row]

    def run(params, key):
      b, log_q = jax.vmap(lambda k: models.sample_q(model, params, x, k))(
          jax.random.split(key, n))
      xs = jnp.broadcast_to(x, (n, D_TINY))
      return b, log_q, model.apply(params, xs, b, method="log_joint")[1]

    b, log_q, log_q_again = jit(run)(params, jax.random.key(3))
    np.testing.assert_allclose(log_q, log_q_again, rtol=1e-5, atol=1e-5)
    flat = np.concatenate([np.asarray(l).reshape(n, -1)
                           for l in jax.tree_util.tree_leaves(b)], axis=1)
    self.assertTrue(np.all((flat == 0) | (flat == 1)))
    states = np.concatenate([np.asarray(l).reshape(len(l), -1)
                             for l in jax.tree_util.tree_leaves(
                                 all_latents(model))], axis=1)
    probs = np.exp(tables(name)[0][row])
    weights = 2.0 ** np.arange(states.shape[1])
    lookup = {v: i for i, v in enumerate(states @ weights)}
    counts = np.bincount([lookup[v] for v in flat @ weights],
                         minlength=len(states))
    # States expected fewer than 10 times are pooled into one bin, where the
    # normal approximation of a count holds.
    rare = probs * n < 10
    counts = np.append(counts[~rare], counts[rare].sum())
    probs = np.append(probs[~rare], probs[rare].sum())
    freq = counts / n
    z = np.abs(freq - probs) / np.sqrt(probs * (1 - probs) / n)
    self.assertLess(float(np.max(z)), 5.0, msg=f"freq {freq}\nprobs {probs}")

  def test_module_level_samplers_and_shapes(self):
    sbn3 = models.SBN(num_layers=3, num_latents=7, data_dim=D_TINY)
    cases = ((tiny("sbn_linear_2"), sbn.sample_q),
             (tiny("vae_learned"), categorical_vae.sample_q),
             ((sbn3, init(sbn3, jax.random.key(0))), sbn.sample_q))

    leadings = ((), (2, 3))

    def run(key):
      out = []
      for (model, params), fn in cases:
        for leading in leadings:
          x = jnp.ones(leading + (D_TINY,))
          out.append((fn(model, params, x, key),
                      models.sample_q(model, params, x, key)))
      return out

    out = jit(run)(jax.random.key(0))
    for i, (mine, generic) in enumerate(out):
      b, log_q = mine  # the protocol's sampler returns a tuple of layers
      chex.assert_trees_all_equal(
          (b if isinstance(b, tuple) else (b,), log_q), generic)
      leading = leadings[i % 2]
      b, log_q = mine
      chex.assert_shape(log_q, leading)
      if i >= 4:  # the three-layer SBN
        self.assertLen(b, 3)
        chex.assert_shape(b, leading + (7,))


class RelaxedTest(parameterized.TestCase):
  """Relaxed b in (0, 1) follow the Bernoulli / categorical formulas."""

  def test_sbn_relaxed(self):
    model, params = tiny("sbn_nonlinear_2")
    key1, key2, key3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.uniform(key1, (4, D_TINY))
    bs = (jax.random.uniform(key2, (4, 3)), jax.random.uniform(key3, (4, 3)))

    def run(params, x, bs):
      enc = lambda l, h: model.apply(params, l, h, method="encoder_logits")
      dec = lambda l, b: model.apply(params, l, b, method="decoder_logits")
      grads = jax.grad(lambda bs: jnp.sum(model.apply(params, x, bs)[0]))(bs)
      return (model.apply(params, x, bs), grads,
              (enc(0, x), enc(1, bs[0]), dec(0, bs[0]), dec(1, bs[1])))

    (log_p, log_q), grads, (e0, e1, d0, d1) = jit(run)(params, x, bs)

    def ref(b, logits):
      b = np.asarray(b, np.float64)
      p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
      return np.sum(b * np.log(p) + (1 - b) * np.log1p(-p), -1)

    expected_q = ref(bs[0], e0) + ref(bs[1], e1)
    expected_p = (ref(x, d0) + ref(bs[0], d1)
                  + ref(bs[1], params["params"]["prior_logits"]))
    np.testing.assert_allclose(log_q, expected_q, rtol=1e-5)
    np.testing.assert_allclose(log_p, expected_p, rtol=1e-5)
    self.assertTrue(all(np.all(np.isfinite(g)) for g in grads))
    self.assertTrue(np.any(np.asarray(grads[0]) != 0))

  def test_vae_relaxed(self):
    model, params = tiny("vae_learned")
    key1, key2 = jax.random.split(jax.random.key(0))
    x = jax.random.uniform(key1, (4, D_TINY))
    b = jax.nn.softmax(jax.random.normal(key2, (4, 2, 3)) * 2.0)
    logits, log_q, log_p = jit(lambda p: (
        model.apply(p, x, method="encoder_logits"),
        model.apply(p, x, b, method="log_q"),
        model.apply(p, x, b, method="log_p")))(params)
    logits = np.asarray(logits, np.float64)
    log_softmax = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
    np.testing.assert_allclose(
        log_q, np.sum(np.asarray(b) * log_softmax, (-2, -1)), rtol=1e-5)
    chex.assert_shape(log_p, (4,))
    chex.assert_tree_all_finite(log_p)

  def test_extreme_logits(self):
    logits = jnp.array([1000.0, -1000.0, 1000.0, -1000.0])
    b = jnp.array([1.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(
        sbn.bernoulli_log_prob(b[:2], logits[:2]), 0.0, atol=1e-6)
    np.testing.assert_allclose(
        sbn.bernoulli_log_prob(b[2:], logits[2:]), -2000.0, rtol=1e-6)
    onehot = jnp.array([[1.0, 0.0]])
    np.testing.assert_allclose(
        categorical_vae.categorical_log_prob(onehot, jnp.array([[0.0, 1e3]])),
        -1e3, rtol=1e-6)


class BatchingTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("sbn_linear_2", models.SBN(num_layers=2, num_latents=20)),
      ("sbn_nonlinear_1", models.SBN(num_layers=1, num_latents=20,
                                     nonlinear=True, hidden=30)),
      ("vae", models.CategoricalVAE(num_vars=5, num_classes=4, hidden=(32, 16),
                                    learned_prior=True)),
  )
  def test_single_vs_batched(self, model):
    """Full-size data: a single point (784,), a batch (5, 784) and (2, 2, 784)
    give the same log-probabilities (one jit traces all three paths)."""
    params = init(model, jax.random.key(0))
    x = (jax.random.uniform(jax.random.key(2), (5, 784)) < 0.3).astype(
        jnp.float32)

    def run(params, x, key):
      b, _ = models.sample_q(model, params, x, key)
      joint = lambda x, b: model.apply(params, x, b, method="log_joint")
      batched = joint(x, b)
      singles = [joint(x[i], jax.tree_util.tree_map(lambda v, i=i: v[i], b))
                 for i in range(5)]
      x2 = x[:4].reshape(2, 2, 784)
      b2 = jax.tree_util.tree_map(
          lambda v: v[:4].reshape((2, 2) + v.shape[1:]), b)
      return batched, singles, joint(x2, b2)

    (log_p, log_q), singles, (lp2, lq2) = jit(run)(params, x,
                                                    jax.random.key(3))
    chex.assert_shape((log_p, log_q), (5,))
    for i, (lp_i, lq_i) in enumerate(singles):
      chex.assert_shape((lp_i, lq_i), ())
      np.testing.assert_allclose(lp_i, log_p[i], rtol=1e-5)
      np.testing.assert_allclose(lq_i, log_q[i], rtol=1e-5)
    np.testing.assert_allclose(lp2.reshape(4), log_p[:4], rtol=1e-5)
    np.testing.assert_allclose(lq2.reshape(4), log_q[:4], rtol=1e-5)

  def test_wrong_shapes_raise(self):
    model = models.SBN(num_layers=2, num_latents=4, data_dim=6)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(6),
                            zero_latents(model))
    x = jax.ShapeDtypeStruct((3, 6), jnp.float32)
    b = jax.ShapeDtypeStruct((3, 4), jnp.float32)
    with self.assertRaises(ValueError):  # one layer missing
      jax.eval_shape(lambda p, x, b: model.apply(p, x, (b,), method="log_p"),
                     params, x, b)
    with self.assertRaises(AssertionError):  # wrong data_dim
      jax.eval_shape(lambda p, b: model.apply(p, jnp.zeros((3, 5)), (b, b)),
                     params, b)
    with self.assertRaises(ValueError):
      models.SBN(num_layers=0)


class InitTest(parameterized.TestCase):

  def _mean(self):
    mean = np.linspace(0.0, 1.0, D_TINY).astype(np.float32)  # ends get clipped
    clipped = np.clip(mean, 1e-3, 1 - 1e-3)
    return mean, np.log(clipped) - np.log1p(-clipped)

  @parameterized.named_parameters(("linear", False), ("nonlinear", True))
  def test_sbn_decoder_bias(self, nonlinear):
    mean, expected = self._mean()
    model = models.SBN(num_layers=2, num_latents=3, nonlinear=nonlinear,
                       hidden=4, data_dim=D_TINY, train_mean=mean)
    params = init(model, jax.random.key(0))["params"]
    out = "Dense_2" if nonlinear else "Dense_0"
    np.testing.assert_allclose(params["decoders_0"][out]["bias"], expected,
                               rtol=1e-5)
    for name in ("decoders_1", "encoders_0", "encoders_1"):
      np.testing.assert_array_equal(params[name][out]["bias"], 0.0)
    np.testing.assert_array_equal(params["prior_logits"], np.zeros(3))

  def test_sbn_zero_weights_decode_to_the_mean(self):
    """With every kernel zeroed, p(x_d = 1 | b) is the clipped mean pixel."""
    mean, _ = self._mean()
    model = models.SBN(num_layers=1, num_latents=3, data_dim=D_TINY,
                       train_mean=mean)
    params = init(model, jax.random.key(0))
    zeroed = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.zeros_like(v) if "kernel" in str(p) else v, params)
    logits = model.apply(zeroed, 0, jnp.ones(3), method="decoder_logits")
    np.testing.assert_allclose(jax.nn.sigmoid(logits),
                               np.clip(mean, 1e-3, 1 - 1e-3), rtol=1e-4)

  def test_sbn_encoder_centres_input(self):
    mean, _ = self._mean()
    model = models.SBN(num_layers=1, num_latents=3, data_dim=D_TINY,
                       train_mean=mean)
    params = init(model, jax.random.key(0))
    x = jnp.concatenate([jnp.asarray(mean)[None],
                         jnp.asarray(mean) + jnp.eye(D_TINY)])
    logits = model.apply(params, 0, x, method="encoder_logits")
    np.testing.assert_allclose(logits[0], 0.0, atol=1e-6)  # x = mean
    kernel = params["params"]["encoders_0"]["Dense_0"]["kernel"]
    np.testing.assert_allclose(logits[1:], kernel, rtol=1e-5, atol=1e-6)

  def test_vae_decoder_bias_and_centring(self):
    mean, expected = self._mean()
    model = models.CategoricalVAE(num_vars=2, num_classes=3, hidden=(8, 7),
                                  data_dim=D_TINY, train_mean=mean)
    params = init(model, jax.random.key(0))
    p = params["params"]
    np.testing.assert_allclose(p["decoder_layers_2"]["bias"], expected,
                               rtol=1e-5)
    np.testing.assert_array_equal(p["encoder_layers_0"]["bias"], 0.0)
    self.assertNotIn("prior_logits", p)
    # the centred encoder sees zeros at the mean: logits are the last bias (0)
    np.testing.assert_allclose(
        model.apply(params, jnp.asarray(mean), method="encoder_logits"), 0.0,
        atol=1e-6)

  def test_no_train_mean_gives_zero_bias(self):
    params = jax.eval_shape(
        models.SBN(num_layers=1, num_latents=3, data_dim=D_TINY).init,
        jax.random.key(0), jnp.zeros(D_TINY), (jnp.zeros(3),))
    self.assertEqual(params["params"]["decoders_0"]["Dense_0"]["bias"].shape,
                     (D_TINY,))
    params = init(models.SBN(num_layers=1, num_latents=3, data_dim=D_TINY),
                  jax.random.key(0))
    np.testing.assert_array_equal(
        params["params"]["decoders_0"]["Dense_0"]["bias"], np.zeros(D_TINY))

  def test_models_are_hashable_static_args(self):
    mean = np.full(D_TINY, 0.3, np.float32)
    a = models.SBN(num_layers=1, num_latents=3, data_dim=D_TINY,
                   train_mean=mean)
    b = models.SBN(num_layers=1, num_latents=3, data_dim=D_TINY,
                   train_mean=tuple(mean.tolist()))
    self.assertEqual(hash(a), hash(b))
    self.assertEqual(a, b)
    params = init(a, jax.random.key(0))
    sample = jit(models.sample_q, static_argnums=0)
    out_a = sample(a, params, jnp.ones(D_TINY), jax.random.key(1))
    out_b = sample(b, params, jnp.ones(D_TINY), jax.random.key(1))
    chex.assert_trees_all_equal(out_a, out_b)
    hash(models.CategoricalVAE(train_mean=np.zeros(784), hidden=[4]))


class ActivationTest(parameterized.TestCase):

  @parameterized.parameters(
      ("tanh", np.tanh),
      ("leaky_relu", lambda h: np.where(h > 0, h, 0.3 * h)),  # DisARM's
  )
  def test_nonlinear_conditionals_apply_the_named_activation(self, name, act):
    x = np.asarray(jax.random.normal(jax.random.key(0), (3, 5)))
    module = sbn.Conditional(4, hidden=6, nonlinear=True, activation=name)
    variables = module.init(jax.random.key(1), x)
    p = jax.tree.map(np.asarray, variables["params"])
    h = act(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    h = act(h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"])
    expected = h @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
    np.testing.assert_allclose(module.apply(variables, x), expected,
                               rtol=1e-5, atol=1e-6)



class _OneArray(custom_model.MixedVAE):
  """log_joint returns log p - log q (one array) instead of the pair."""

  def log_joint(self, x, bs):
    log_p, log_q = super().log_joint(x, bs)
    return log_p - log_q


class _Summed(custom_model.MixedVAE):
  """log_joint summed over the batch."""

  def log_joint(self, x, bs):
    return tuple(jnp.sum(a) for a in super().log_joint(x, bs))


class _FlatLogits(custom_model.MixedVAE):
  """The categorical layer's logits flattened to (..., V C)."""

  def layer_logits(self, layer, x, above):
    out = super().layer_logits(layer, x, above)
    return out.reshape(out.shape[:-2] + (-1,)) if layer == 0 else out


class _TrailingOne(custom_model.MixedVAE):
  """The Bernoulli layer's logits shaped (..., H, 1)."""

  def layer_logits(self, layer, x, above):
    out = super().layer_logits(layer, x, above)
    return out[..., None] if layer == 1 else out


class _IntLogits(custom_model.MixedVAE):
  """Integer logits."""

  def layer_logits(self, layer, x, above):
    return super().layer_logits(layer, x, above).astype(jnp.int32)


def _bernoulli_log_prob(logits, b):
  return jnp.sum(b * jax.nn.log_sigmoid(logits)
                 + (1 - b) * jax.nn.log_sigmoid(-logits), axis=-1)


class _Minimal(nn.Module):
  """One Bernoulli layer of 2 units; q's module is `encoder`; no train_mean
  field (it is optional)."""
  data_dim: int = 5

  def setup(self):
    self.encoder = nn.Dense(2)
    self.decoder = nn.Dense(self.data_dim)

  def q_logits(self, x):
    return self.encoder(x)

  def stochastic_layers(self):
    return (protocol.StochasticLayer("bernoulli", (2,)),)

  def layer_logits(self, layer, x, above):
    del layer, above
    return self.q_logits(x)

  def log_joint(self, x, bs):
    (b,) = bs
    log_q = _bernoulli_log_prob(self.q_logits(x), b)
    log_p = (_bernoulli_log_prob(jnp.zeros_like(b), b)
             + _bernoulli_log_prob(self.decoder(b), x))
    return log_p, log_q


class _Unnamed(_Minimal):
  """q's parameters under a module not named "encoder"."""

  def setup(self):
    self.q_net = nn.Dense(2)
    self.decoder = nn.Dense(self.data_dim)

  def q_logits(self, x):
    return self.q_net(x)


class ModelProtocolCheckTest(parameterized.TestCase):
  """`models.protocol.check` names the method, what it returned, the fix."""

  def test_the_library_models_pass(self):
    for model in (models.SBN(num_layers=2, num_latents=3, data_dim=5),
                  categorical_vae.CategoricalVAE(num_vars=2, num_classes=3,
                                                 hidden=(4,), data_dim=5),
                  models.GaussianVAE(latent_dim=2, hidden=(4,), data_dim=5),
                  custom_model.MixedVAE(data_dim=5, num_units=2, num_vars=1,
                                        num_classes=3)):
      protocol.check(model)

  @parameterized.parameters(
      (_OneArray, r"log_joint\(x, bs\) returned an array of shape \(3,\)"),
      (_Summed, r"log_joint.*shape \(\).*not summed over the batch"),
      (_FlatLogits, r"layer_logits\(0, x, above\) returned an array of "
       r"shape \(3, 3\).*expected float logits of shape \(3, 1, 3\)"),
      (_TrailingOne, r"layer_logits\(1, x, above\).*\(3, 2, 1\).*\(3, 2\)"),
      (_IntLogits, r"layer_logits\(0.*dtype int32"))
  def test_violations_are_named(self, cls, message):
    model = cls(data_dim=5, num_units=2, num_vars=1, num_classes=3)
    with self.assertRaisesRegex(protocol.ModelError, message):
      protocol.check(model)

  def test_a_violation_is_refused_before_any_gradient(self):
    """At batch size 2, one array of log-weights would unpack as the pair."""
    model = _OneArray(data_dim=3, num_units=2, num_vars=1, num_classes=3)
    good = custom_model.MixedVAE(data_dim=3, num_units=2, num_vars=1,
                                 num_classes=3)
    x = jnp.ones((2, 3))
    params = good.init(jax.random.key(0), x, (
        jnp.zeros((2, 1, 3)), jnp.zeros((2, 2))), method="log_joint")
    spec = gradients.EstimatorSpec("reinforce",
                                   families=("categorical", "bernoulli"))
    with self.assertRaisesRegex(protocol.ModelError, "log_joint"):
      gradients.model_gradients(model, spec, params, spec.init(
          jax.random.key(1), model), x, jax.random.key(2))

  def test_bad_layers_are_named(self):
    class NoLayers(custom_model.MixedVAE):
      def stochastic_layers(self):
        return ()

    class BadShape(custom_model.MixedVAE):
      def stochastic_layers(self):
        return (protocol.StochasticLayer("bernoulli", [2]),)

    for cls, message in ((NoLayers, "is empty"),
                         (BadShape, "tuple of positive ints")):
      with self.assertRaisesRegex(protocol.ModelError, message):
        protocol.check(cls(data_dim=5))

  def test_q_lives_under_encoder_modules_and_train_mean_is_optional(self):
    with self.assertRaisesRegex(protocol.ModelError,
                                "no parameters under a submodule whose name "
                                "contains 'encoder'"):
      protocol.check(_Unnamed())
    model = _Minimal()
    protocol.check(model)
    self.assertFalse(hasattr(model, "train_mean"))
    x = jnp.ones((3, 5))
    params = model.init(jax.random.key(0), x, (jnp.zeros((3, 2)),),
                        method="log_joint")
    spec = gradients.EstimatorSpec("nvil")  # reads the baseline inputs
    grads, _, _, metrics = gradients.model_gradients(
        model, spec, params, spec.init(jax.random.key(1), model), x,
        jax.random.key(2))
    self.assertTrue(np.isfinite(float(metrics["elbo"])))
    self.assertTrue(np.any(np.asarray(
        grads["params"]["encoder"]["kernel"]) != 0))

if __name__ == "__main__":
  absltest.main()


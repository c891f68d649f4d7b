r"""One noise draw per layer and step: the chain's noise is the estimators' noise.

A model's chain samples b_l = sample_from_noise(l_l, noise(key_l)); every
estimator then needs the same b_l and, without help, would draw noise(key_l)
again (XLA does not merge two threefry loops). The estimators take the
chain's noise instead (`noise=`). Two claims, both exact (no timing):

* given the noise of its key, an estimator returns the estimate it returns
  from the key alone, draw for draw, for every registered estimator;
* a training step's program generates, per data point and layer, the random
  words of one noise draw (NOISE_WORDS per latent) plus only what the
  estimator needs beyond the sample (leave-one-out's n - 1 further samples,
  Gumbel-Rao's K conditional draws, untied REBAR's v), counted in its jaxpr.
"""
import math

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from rebar_jax import estimators
from rebar_jax import gradients
from rebar_jax import models
from rebar_jax.estimators import bernoulli
from rebar_jax.estimators import categorical
from rebar_jax.estimators import noise as noise_lib
from rebar_jax.estimators import registry

FAMILIES = {"bernoulli": (bernoulli, estimators.BERNOULLI, (5,)),
            "categorical": (categorical, estimators.CATEGORICAL, (3, 4))}


def _f(b):
  w = jnp.linspace(-1.0, 1.5, b.size).reshape(b.shape)
  return jnp.sin(jnp.sum(w * b)) + jnp.sum(b) ** 2


class GivenNoiseTest(parameterized.TestCase):

  @parameterized.parameters(*[(fam, name) for fam, (_, r, _) in FAMILIES.items()
                              for name in r])
  def test_same_estimate_as_from_the_key(self, family, name):
    module, registry, shape = FAMILIES[family]
    est = registry[name]
    logits = jnp.linspace(-2.0, 2.0, math.prod(shape)).reshape(shape)
    keys = jax.random.split(jax.random.key(7), 8)

    @jax.jit
    def both(keys):
      def one(k):
        nz = module.noise(k, shape)
        return est(k, logits, _f), est(k, logits, _f, noise=nz)
      return jax.vmap(one)(keys)

    from_key, given = both(keys)
    self.assertGreater(float(jnp.max(jnp.abs(from_key))), 0.0)
    np.testing.assert_allclose(given, from_key, rtol=1e-6, atol=1e-6)

  def test_wrong_shape_is_refused(self):
    with self.assertRaisesRegex(ValueError, "noise must have the shape"):
      bernoulli.rebar(jax.random.key(0), jnp.zeros(3), _f,
                      noise=jnp.zeros(4))


# ----------------------------------------------------------------------------
# Random words in a step's program.
# ----------------------------------------------------------------------------


def _subjaxprs(value):
  if isinstance(value, jax.extend.core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jax.extend.core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _subjaxprs(v)


def random_words(jaxpr) -> int:
  """uint32 words the program generates: threefry outputs, random bits, keys.

  Walks nested jaxprs (jit, custom derivatives, vmap's batched shapes are in
  the avals); a scan's body counts `length` times.
  """
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "threefry2x32":
      total += sum(v.aval.size for v in eqn.outvars)
    elif name == "random_bits":
      total += sum(v.aval.size * max(1, v.aval.dtype.itemsize // 4)
                   for v in eqn.outvars)
    elif name in ("random_split", "random_fold_in"):
      total += sum(2 * v.aval.size for v in eqn.outvars)
    repeat = eqn.params.get("length", 1) if name == "scan" else 1
    for value in eqn.params.values():
      for sub in _subjaxprs(value):
        total += repeat * random_words(sub)
  return total


_BATCH = 3


def _model_and_params(family, x):
  """A 2-layer SBN or a categorical VAE, and its variables."""
  if family == "bernoulli":
    model = models.SBN(num_layers=2, num_latents=4, data_dim=6)
    bs = (jnp.zeros((1, 4)), jnp.zeros((1, 4)))
  else:
    model = models.CategoricalVAE(num_vars=2, num_classes=3, hidden=(4,),
                                  data_dim=6)
    bs = jnp.zeros((1, 2, 3))
  return model, model.init(jax.random.key(0), x[:1], bs)


# Noise draws per data point and layer beyond the chain's one: each costs
# NOISE_WORDS words per latent (a categorical layer's latents are V x C).
# The stick-breaking DisARM draws two arrays of V x (C - 1) = 2/3 of a draw.
# CARMS draws V orders (randint: a key split and two bit arrays) and (K - 1) V
# exponentials, with their key splits: 24 words per data point here, 0.8 of a
# draw of V x C = 6 latents.
_EXTRA_DRAWS = {"reinforce_loo": 1, "double_cv": 1, "rodeo": 1, "gumbel_rao": 10,
                "disarm_stick_breaking": 4 / 3,
                "disarm_stick_breaking_rb": 4 / 3,
                "disarm_stick_breaking_iw": 4 / 3, "carms": 0.8}


class StepRandomnessTest(parameterized.TestCase):

  @parameterized.parameters(
      *[(fam, name) for fam in FAMILIES
        for name in registry.names(family=fam, kind=registry.LAYER)
        if not registry.build(name, fam).relaxed_objective])
  def test_one_noise_draw_per_layer(self, family, name):
    x = jnp.asarray(np.random.default_rng(0).integers(0, 2, (_BATCH, 6)),
                    jnp.float32)
    model, params = _model_and_params(family, x)
    spec = gradients.EstimatorSpec(name, families=(family,))
    state = spec.init(jax.random.key(2), model)
    jaxpr = jax.make_jaxpr(
        lambda p, s, k: gradients.model_gradients(model, spec, p, s, x, k))(
            params, state, jax.random.key(3))
    latents = sum(math.prod(layer.event_shape)
                  for layer in model.stochastic_layers())
    noise_words = _BATCH * latents * noise_lib.NOISE_WORDS
    draws = 1 + _EXTRA_DRAWS.get(name, 0)
    num_layers = len(model.stochastic_layers())
    # Beyond the noise: key splits, a few words per data point and layer.
    key_words = 16 * _BATCH * num_layers
    words = random_words(jaxpr.jaxpr)
    self.assertGreaterEqual(words, draws * noise_words)
    self.assertLessEqual(words, draws * noise_words + key_words,
                         f"{words} random words for {draws} noise draws of "
                         f"{noise_words} words")


if __name__ == "__main__":
  absltest.main()

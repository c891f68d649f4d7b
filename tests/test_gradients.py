"""Model gradients from one-layer estimators, proved on a tiny two-layer SBN.

The exact gradient of the mean ELBO over a batch is computed by enumerating
every latent configuration (2 layers x 2 units: 16 states per data point); the
Monte Carlo mean of `model_gradients` over many keys must match it within
z <= 4.5 for every parameter, for every unbiased estimator, including REBAR and
RELAX whose control variates run through the relaxed downstream chain.
"""
import itertools
from unittest import mock

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from rebar_jax import gradients
from rebar_jax import testing
from rebar_jax.models import categorical_vae as cat_lib
from rebar_jax.models import gaussian as gaussian_lib
from rebar_jax.models import sbn as sbn_lib

from examples import custom_model
import tiny_models

MODEL = sbn_lib.SBN(num_layers=2, num_latents=2, data_dim=3,
                    train_mean=np.array([0.3, 0.6, 0.5], np.float32))
X = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])


def _params():
  bs = (jnp.zeros((2, 2)), jnp.zeros((2, 2)))
  params = MODEL.init(jax.random.key(0), X, bs)
  # Larger weights than the default init, so the latents matter.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(tree, [
      l + jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


def exact_neg_elbo_grad(params):
  states = [jnp.array(s, jnp.float32)
            for s in itertools.product([0.0, 1.0], repeat=2)]
  chains = [(b1, b2) for b1 in states for b2 in states]

  def mean_elbo(p):
    total = 0.0
    for b1, b2 in chains:
      bs = (jnp.broadcast_to(b1, (2, 2)), jnp.broadcast_to(b2, (2, 2)))
      log_p, log_q = MODEL.apply(p, X, bs)
      total = total + jnp.exp(log_q) * (log_p - log_q)
    return jnp.mean(total)

  return jax.grad(lambda p: -mean_elbo(p))(params)


def _flat(tree):
  return jnp.concatenate([jnp.ravel(l) for l in jax.tree.leaves(tree)])


UNBIASED = ["reinforce", "nvil", "reinforce_loo", "arm", "disarm", "muprop",
            "muprop_baseline", "rebar", "relax"]


class TwoLayerSBNTest(parameterized.TestCase):

  @parameterized.parameters(*UNBIASED)
  def test_model_gradient_is_unbiased(self, name):
    params = _params()
    spec = gradients.EstimatorSpec(name, temperature=0.7)
    est_state = spec.init(jax.random.key(2), MODEL)
    if name == "relax":  # a nonzero network, so it is really tested
      est_state = est_state._replace(params=[
          q._replace(mlp=[(w + 0.5, b + 0.1) for w, b in q.mlp])
          for q in est_state.params])
    target = _flat(exact_neg_elbo_grad(params))

    def one(key):
      grads, _, _, _ = gradients.model_gradients(MODEL, spec, params, est_state,
                                               X, key)
      return _flat(grads)

    samples = testing.draws(lambda k, l, f: one(k), jax.random.key(3),
                            jnp.zeros(target.shape), None, 2**15)
    testing.assert_unbiased(samples, np.asarray(target), name=name)

  def test_relaxed_estimators_are_biased(self):
    params = _params()
    spec = gradients.EstimatorSpec("concrete", temperature=1.0)
    est_state = spec.init(jax.random.key(2), MODEL)
    target = _flat(exact_neg_elbo_grad(params))

    def one(key):
      return _flat(gradients.model_gradients(MODEL, spec, params, est_state, X,
                                           key)[0])

    samples = testing.draws(lambda k, l, f: one(k), jax.random.key(3),
                            jnp.zeros(target.shape), None, 2**14)
    testing.assert_biased(samples, np.asarray(target), name="concrete")

  def test_enumeration_of_any_protocol_model_matches_the_hand_written_one(self):
    params = _params()
    np.testing.assert_allclose(
        _flat(exact_neg_elbo_grad_of(MODEL, params)),
        _flat(exact_neg_elbo_grad(params)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        _flat(jax.grad(lambda p: -jnp.mean(
            testing.exact_iw_bound(MODEL, p, X, 2)))(params)),
        _flat(exact_neg_iw_grad(params)), rtol=1e-5, atol=1e-6)

  def test_unknown_estimator_is_rejected_with_the_choices(self):
    with self.assertRaisesRegex(ValueError, "choose one of .*disarm.*nvil"):
      gradients.EstimatorSpec("vimco")
    with self.assertRaisesRegex(ValueError,
                                "temperature must be a finite number > 0"):
      gradients.EstimatorSpec("rebar", temperature=0.0)


def exact_neg_iw_grad(params):
  """-grad of the mean over X of E[L_2], by enumerating all 16^2 chain pairs."""
  states = [jnp.array(s, jnp.float32)
            for s in itertools.product([0.0, 1.0], repeat=2)]
  chains = [(b1, b2) for b1 in states for b2 in states]

  def mean_iw(p):
    log_w, log_q = [], []
    for b1, b2 in chains:
      bs = (jnp.broadcast_to(b1, (2, 2)), jnp.broadcast_to(b2, (2, 2)))
      lp, lq = MODEL.apply(p, X, bs)
      log_w.append(lp - lq)
      log_q.append(lq)
    log_w, log_q = jnp.stack(log_w), jnp.stack(log_q)  # (16, B)
    # Every ordered pair of chains (K = 2): 16 x 16 joint states.
    prob = jnp.exp(log_q[:, None] + log_q[None, :])
    lk = jnp.logaddexp(log_w[:, None], log_w[None, :]) - jnp.log(2.0)
    return jnp.mean(jnp.sum(prob * lk, axis=(0, 1)))

  return jax.grad(lambda p: -mean_iw(p))(params)


class MultiSampleTrainingTest(parameterized.TestCase):

  @parameterized.parameters(("vimco_geometric", "iw"), ("ovis_gamma0", "iw"),
                            ("iwae_reinforce", "iw"), ("disarm_iw", "iw"),
                            ("vargrad", "elbo"), ("elbo_loo", "elbo"))
  def test_k_sample_gradients_are_unbiased(self, name, target_kind):
    params = _params()
    spec = gradients.EstimatorSpec(name, iw_samples=2)
    est_state = spec.init(jax.random.key(2), MODEL)
    target = _flat(exact_neg_iw_grad(params) if target_kind == "iw" else
                   exact_neg_elbo_grad(params))

    def one(key):
      return _flat(gradients.model_gradients(MODEL, spec, params, est_state, X,
                                             key)[0])

    samples = testing.draws(lambda k, l, f: one(k), jax.random.key(4),
                            jnp.zeros(target.shape), None, 2**14)
    testing.assert_unbiased(samples, np.asarray(target), name=name)

  def test_multisample_needs_k_of_two_or_more(self):
    with self.assertRaisesRegex(ValueError, "iw_samples"):
      gradients.EstimatorSpec("vimco_geometric")


CAT_MODEL = cat_lib.CategoricalVAE(
    num_vars=2, num_classes=3, hidden=(4,), data_dim=3,
    train_mean=np.array([0.3, 0.6, 0.5], np.float32))


def _cat_params():
  params = CAT_MODEL.init(jax.random.key(0), X, jnp.zeros((2, 2, 3)))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(tree, [
      l + jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


def exact_neg_elbo_grad_of(model, params):
  """-grad of the mean ELBO, every joint state enumerated (`testing`)."""
  return jax.grad(lambda p: -jnp.mean(testing.exact_elbo(model, p, X)))(params)


class CategoricalVAETest(parameterized.TestCase):
  """The same composition on a one-layer categorical VAE (9 states)."""

  @parameterized.parameters("reinforce", "nvil", "arsm", "rebar", "relax")
  def test_model_gradient_is_unbiased(self, name):
    params = _cat_params()
    spec = gradients.EstimatorSpec(name, families=("categorical",),
                                   temperature=0.7)
    est_state = spec.init(jax.random.key(2), CAT_MODEL)
    if name == "relax":
      est_state = est_state._replace(params=[
          q._replace(mlp=[(w + 0.5, b + 0.1) for w, b in q.mlp])
          for q in est_state.params])
    target = _flat(exact_neg_elbo_grad_of(CAT_MODEL, params))

    def one(key):
      return _flat(gradients.model_gradients(CAT_MODEL, spec, params,
                                             est_state, X, key)[0])

    samples = testing.draws(lambda k, l, f: one(k), jax.random.key(3),
                            jnp.zeros(target.shape), None, 2**14)
    testing.assert_unbiased(samples, np.asarray(target), name=name)


# A user's model (examples/custom_model.py): a categorical layer (1 variable of
# 3 classes) above a Bernoulli layer of 2 units, 12 joint states.
MIXED = custom_model.MixedVAE(data_dim=3, num_units=2, num_vars=1,
                              num_classes=3)


def _mixed_params():
  states = testing.latent_states(MIXED)
  params = MIXED.init(jax.random.key(0), X, tuple(s[:2] for s in states),
                      method="log_joint")
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(tree, [
      l + jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


class MixedFamiliesTest(parameterized.TestCase):
  """The composition on a model mixing families, against enumeration."""

  @parameterized.parameters(
      ("bernoulli:disarm,categorical:arsm", 1), ("relax", 1), ("nvil", 1),
      ("vimco_geometric", 2), ("ovis_gamma0", 2))
  def test_model_gradient_is_unbiased(self, name, k):
    params = _mixed_params()
    spec = gradients.EstimatorSpec(
        name, families=gradients.layer_families(MIXED), iw_samples=k,
        temperature=0.7)
    est_state = spec.init(jax.random.key(2), MIXED)
    if name == "relax":  # nonzero networks, so they are really tested
      est_state = est_state._replace(params=jax.tree.map(
          lambda a: a + 0.3, est_state.params))
    if k == 1:
      target = _flat(exact_neg_elbo_grad_of(MIXED, params))
    else:  # unbiased for the importance-weighted bound of K chains
      target = _flat(jax.grad(lambda p: -jnp.mean(
          testing.exact_iw_bound(MIXED, p, X, k)))(params))

    def one(key):
      return _flat(gradients.model_gradients(MIXED, spec, params, est_state,
                                             X, key)[0])

    samples = testing.draws(lambda k, l, f: one(k), jax.random.key(3),
                            jnp.zeros(target.shape), None, 2**14)
    testing.assert_unbiased(samples, np.asarray(target), name=name)

  def test_relaxing_every_layer_is_biased(self):
    params = _mixed_params()
    spec = gradients.EstimatorSpec(
        "bernoulli:concrete,categorical:gumbel_softmax",
        families=gradients.layer_families(MIXED), temperature=1.0)
    target = _flat(exact_neg_elbo_grad_of(MIXED, params))

    def one(key):
      return _flat(gradients.model_gradients(
          MIXED, spec, params, spec.init(jax.random.key(2), MIXED), X,
          key)[0])

    samples = testing.draws(lambda k, l, f: one(k), jax.random.key(3),
                            jnp.zeros(target.shape), None, 2**14)
    testing.assert_biased(samples, np.asarray(target), name="relaxed")

  def test_per_family_names_must_cover_the_model(self):
    with self.assertRaisesRegex(ValueError, "name one estimator for each"):
      gradients.EstimatorSpec("bernoulli:disarm",
                              families=("categorical", "bernoulli"))
    with self.assertRaisesRegex(ValueError, "Unknown estimator 'arm' for "
                                "categorical layers"):
      gradients.EstimatorSpec("arm", families=("categorical", "bernoulli"))
    with self.assertRaisesRegex(ValueError, "cannot be combined"):
      gradients.EstimatorSpec("bernoulli:concrete,categorical:arsm",
                              families=("categorical", "bernoulli"))
    spec = gradients.EstimatorSpec("rebar", families=("bernoulli",))
    with self.assertRaisesRegex(ValueError, "families=layer_families"):
      gradients.model_gradients(MIXED, spec, _mixed_params(), spec.init(
          jax.random.key(0), MIXED), X, jax.random.key(1))


# Every order of two families, integrated exactly (quadrature over a one-unit
# Gaussian layer x enumeration of the discrete ones). The pairs cover each kind of estimator
# the composition treats differently: pathwise (the Gaussian layer's estimate
# carries the discrete layers' estimates below back along z), f values only,
# relaxed control variates (REBAR, RELAX), MuProp's Taylor term, the chain's
# signal (REINFORCE, NVIL) and leave-one-out.
_SHAPES = {"gaussian": (1,), "bernoulli": (2,), "categorical": (1, 3)}
FAMILY_ORDERS = {
    ("gaussian", "bernoulli"): (
        "gaussian:pathwise,bernoulli:disarm",
        "gaussian:pathwise,bernoulli:rebar",
        "gaussian:reinforce_loo,bernoulli:muprop"),
    ("bernoulli", "gaussian"): (
        "gaussian:pathwise,bernoulli:relax", "nvil",
        "gaussian:pathwise,bernoulli:reinforce_loo"),
    ("gaussian", "categorical"): (
        "gaussian:pathwise,categorical:arsm",
        "gaussian:pathwise,categorical:rebar",
        "gaussian:nvil,categorical:unordered_set"),
    ("categorical", "gaussian"): (
        "gaussian:pathwise,categorical:relax", "reinforce",
        "gaussian:pathwise,categorical:disarm_stick_breaking"),
    # (categorical, bernoulli) is MixedFamiliesTest's model.
    ("bernoulli", "categorical"): (
        "bernoulli:rebar,categorical:carms", "bernoulli:disarm,categorical:relax",
        "bernoulli:muprop,categorical:reinforce_loo"),
}


def _two_layer(families):
  """A TwoLayer model whose lower layer strongly depends on the upper one."""
  model = tiny_models.TwoLayer(families, tuple(_SHAPES[f] for f in families))
  bs = tuple(jnp.zeros((2,) + s) for s in model.shapes)
  params = model.init(jax.random.key(0), X, bs, method="log_joint")
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [
      l + 0.5 * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])
  weights = params["params"]
  weights["encoder_1"]["kernel"] = 4.0 * weights["encoder_1"]["kernel"]
  weights["decoder_x"]["kernel"] = 3.0 * weights["decoder_x"]["kernel"]
  return model, params


class FamilyOrderTest(parameterized.TestCase):
  """Every order of a Gaussian and a discrete layer, against exact gradients."""

  @parameterized.parameters(*FAMILY_ORDERS)
  def test_model_gradient_is_unbiased(self, *families):
    model, params = _two_layer(families)
    with jax.enable_x64():
      p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
      target = np.asarray(_flat(jax.grad(lambda p: -jnp.mean(
          testing.exact_elbo(model, p, jnp.asarray(X, jnp.float64))))(p64)))
    names = FAMILY_ORDERS[families]
    specs = [gradients.EstimatorSpec(n, families=gradients.layer_families(
        model), temperature=0.7) for n in names]
    states = [s.init(jax.random.key(2), model) for s in specs]

    def every(key):  # one program for every estimator of this order
      keys = jax.random.split(key, len(specs))
      return jnp.stack([_flat(gradients.model_gradients(
          model, s, params, st, X, k)[0])
                        for s, st, k in zip(specs, states, keys)])

    samples = testing.draws(lambda k, l, f: every(k), jax.random.key(3),
                            jnp.zeros((len(specs),) + target.shape), None,
                            2**14)
    for i, name in enumerate(names):
      testing.assert_unbiased(samples[:, i], target, name=f"{families} {name}")

  def test_pathwise_without_the_layers_below_is_biased(self):
    """The pathwise Gaussian estimate alone (the audit's defect) is caught."""
    model, params = _two_layer(("gaussian", "bernoulli"))
    with jax.enable_x64():
      p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
      target = np.asarray(_flat(jax.grad(lambda p: -jnp.mean(
          testing.exact_elbo(model, p, jnp.asarray(X, jnp.float64))))(p64)))
    spec = gradients.EstimatorSpec("gaussian:pathwise,bernoulli:disarm",
                                   families=("gaussian", "bernoulli"))
    state = spec.init(jax.random.key(2), model)
    with mock.patch.object(gradients, "_carry_back",
                           lambda pathwise, layers, grads, c: list(grads)):
      samples = testing.draws(lambda k, l, f: _flat(gradients.model_gradients(
          model, spec, params, state, X, k)[0]), jax.random.key(3),
                              jnp.zeros(target.shape), None, 2**14)
    testing.assert_biased(samples, target, name="pathwise alone")

  def test_quadrature_matches_the_closed_form_gaussian_elbo(self):
    model = gaussian_lib.LinearGaussian(dim=1)
    x = jnp.array([[0.3], [-1.2]])
    params = model.init(jax.random.key(0), x, jnp.zeros((2, 1)))
    params = jax.tree.map(lambda a: a + 0.4, params)
    np.testing.assert_allclose(testing.exact_elbo(model, params, x),
                               model.apply(params, x, method="elbo"),
                               rtol=1e-5)

  def test_rescaled_estimators_are_refused_beside_pathwise_layers(self):
    with self.assertRaisesRegex(ValueError, "running variance"):
      gradients.EstimatorSpec("gaussian:pathwise,bernoulli:nvil",
                              families=("gaussian", "bernoulli"))
    with self.assertRaisesRegex(ValueError, "more than once"):
      gradients.EstimatorSpec(
          "bernoulli:disarm,categorical:arsm,bernoulli:arm",
          families=("categorical", "bernoulli"))

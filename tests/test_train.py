"""Training on the embedded digits: learning, exact resumption, no retracing."""
import json
import os
from unittest import mock

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from configs import catvae_mnist
from configs import sbn3_mnist_iw
from configs import sbn_mnist
from rebar_jax import errors
from rebar_jax import gradients
from rebar_jax import train


def quick(config, **overrides):
  """`config` made small and fast: short runs, small evaluations."""
  defaults = dict(learning_rate=1e-3, estimator_learning_rate=1e-3,
                  num_steps=400, steps_per_call=100, eval_every=400,
                  checkpoint_every=100, eval_num_samples=10,
                  eval_batch_size=250, eval_max_examples=250,
                  progress_bar=False, diagnostic_draws=4)
  for k, v in {**defaults, **overrides}.items():
    config[k] = v
  return config


def small_config(**overrides):
  """A linear one-layer SBN of 50 units on the embedded digits."""
  return quick(sbn_mnist.get_config(), nonlinear=False, num_latents=50,
               **overrides)


def improvement(config, workdir, metric):
  """(metric at initialisation, final metrics) of a training run."""
  exp = train.build(config)
  before = train.evaluate(exp, train.init_state(exp, 0).params, config,
                          "valid")[metric]
  return before, train.train_and_evaluate(config, workdir)


# A user's one-layer Bernoulli model, in two faulty forms: its log p reads b
# through a threshold (continuous on {0, 1}, not on relaxed samples), or its
# log_joint returns log p - log q instead of the pair.
_USER_MODEL = """
import flax.linen as nn
import jax.numpy as jnp
from rebar_jax.models import protocol


class Model(nn.Module):
  data_dim: int
  pair: bool = True
  train_mean: None = None

  def setup(self):
    self.encoder = nn.Dense(8)
    self.decoder = nn.Dense(self.data_dim)

  def stochastic_layers(self):
    return (protocol.StochasticLayer("bernoulli", (8,)),)

  def layer_logits(self, layer, x, above):
    return self.encoder(x)

  def log_joint(self, x, bs):
    (b,) = bs
    hard = jnp.where(b > 0.5, 1.0, 0.0)
    lx = self.decoder(hard)
    log_p = jnp.sum(x * lx - jnp.logaddexp(0.0, lx), -1)
    lq = self.encoder(x)
    log_q = jnp.sum(b * lq - jnp.logaddexp(0.0, lq), -1)
    return (log_p, log_q) if self.pair else log_p - log_q


def thresholded(config, dataset):
  return Model(dataset.data_dim)


def one_array(config, dataset):
  return Model(dataset.data_dim, pair=False)
"""


class TrainTest(parameterized.TestCase):

  # One estimator per kind of training path: a learned baseline (NVIL), tuned
  # control variates (REBAR), a fully relaxed objective (Gumbel-softmax), a
  # tuned network per layer on a categorical VAE (RELAX), a K-chain surrogate
  # (OVIS). The other estimators train in tests/test_cli.py (configs and
  # their docstring commands) and are proved unbiased in test_gradients.py.
  @parameterized.parameters("nvil", "rebar")
  def test_elbo_improves(self, estimator):
    workdir = self.create_tempdir().full_path
    before, final = improvement(small_config(estimator=estimator), workdir,
                                "valid_elbo")
    self.assertEqual(final["step"], 400)
    self.assertGreater(final["valid_elbo"], before + 20.0,
                       (estimator, before, final))
    self.assertGreaterEqual(final["test_iw10"], final["test_elbo"])
    last = json.loads(open(os.path.join(workdir, "metrics.jsonl")
                           ).readlines()[-1])
    for name in ("grad_log_variance", "grad_snr", "ess", "active_units"):
      self.assertTrue(np.isfinite(last[name]), (name, last))
    self.assertBetween(last["ess"], 1.0, 10.0)
    for name in ("metrics.jsonl", "metrics.csv", "curves.png",
                 "final_metrics.json", "config.json"):
      self.assertTrue(os.path.exists(os.path.join(workdir, name)), name)
    self.assertNotEmpty(os.listdir(os.path.join(workdir, "tensorboard")))

  @parameterized.parameters("gumbel_softmax", "relax")
  def test_categorical_vae_elbo_improves(self, estimator):
    config = quick(catvae_mnist.get_config(), num_vars=8, num_classes=4,
                   mlp_hidden=(64, 32), estimator=estimator, batch_size=24,
                   num_steps=300, eval_every=300, checkpoint_every=300)
    before, final = improvement(config, self.create_tempdir().full_path,
                                "valid_elbo")
    self.assertGreater(final["valid_elbo"], before + 5.0,
                       (estimator, before, final))

  def test_three_layer_sbn_on_the_iw_bound_improves(self,
                                                    estimator="ovis_gamma0"):
    config = quick(sbn3_mnist_iw.get_config(), num_latents=50,
                   estimator=estimator, iw_samples=5, num_steps=300,
                   eval_every=300, checkpoint_every=300)
    before, final = improvement(config, self.create_tempdir().full_path,
                                "valid_iw10")
    self.assertGreater(final["valid_iw10"], before + 20.0,
                       (estimator, before, final))

  def test_estimator_of_the_wrong_family_is_rejected(self):
    config = catvae_mnist.get_config()
    config.estimator = "disarm"
    with self.assertRaisesRegex(ValueError,
                                "Unknown estimator 'disarm' for categorical"):
      train.build(config)

  # Exact resume: tests/test_faults.py (a real process killed many ways ends
  # equal to an uninterrupted run) and tests/test_runs.py (after a fallback).

  def test_train_chunk_does_not_retrace(self):
    config = small_config(estimator="rebar")
    exp = train.build(config)
    state = train.init_state(exp, 0)
    chunk = train.make_train_chunk(exp, 0, max_traces=1)
    x = jnp.asarray(exp.dataset.train)
    for start in (0, 100, 200):
      idx = train.batch_indices(0, x.shape[0], config.batch_size, start, 100)
      state, _ = chunk(state, jnp.asarray(idx), x)  # a retrace would raise
    # The guard itself works: a chunk of another length is a second trace.
    idx = train.batch_indices(0, x.shape[0], config.batch_size, 300, 50)
    with self.assertRaisesRegex(AssertionError, "traced > 1 times"):
      chunk(state, jnp.asarray(idx), x)

  @parameterized.parameters("disarm", "rebar")
  def test_noise_drawn_per_chunk_is_the_noise_drawn_per_step(self, estimator):
    """A chunk's noise drawn before its loop has the per-step values: the
    same gradients for a given key, and (to float rounding of XLA's other
    fusion) the same steps; dynamic binarisation included."""
    config = small_config(estimator=estimator, dataset="mnist")
    exp = train.build(config)
    state = train.init_state(exp, 0)
    x = jnp.asarray(exp.dataset.train[:24] > 0.5, jnp.float32)
    key = jax.random.key(3)
    drawn = gradients.chain_noise(exp.model, 24, key)
    a, b = (gradients.model_gradients(exp.model, exp.spec, state.params,
                                      state.estimator, x, key, noise=n)[0]
            for n in (None, drawn))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    idx = jnp.asarray(train.batch_indices(0, x.shape[0], 24, 0, 10))
    train_x = jnp.asarray(exp.dataset.train)
    ends = []
    for budget in (train.CHUNK_NOISE_BYTES, 0):  # per chunk, per step
      with mock.patch.object(train, "CHUNK_NOISE_BYTES", budget):
        ends.append(train.make_train_chunk(exp, 0)(  # donates its state
            train.init_state(exp, 0), idx, train_x))
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=1e-5),
                 ends[0][1]["elbo"], ends[1][1]["elbo"])

  def test_non_finite_loss_stops_and_keeps_checkpoint(self):
    workdir = self.create_tempdir().full_path
    train.train_and_evaluate(
        small_config(estimator="reinforce", num_steps=200, eval_every=200),
        workdir)
    # Resume with an absurd learning rate: the first update overflows.
    config = small_config(estimator="reinforce", learning_rate=1e38,
                          num_steps=400)
    with self.assertRaisesRegex(errors.TrainingStopped,
                                r"at step 20\d \(.*\) with estimator "
                                r"'reinforce'.*"
                                r"step 200"):
      train.train_and_evaluate(config, workdir, allow_config_change=True)
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir,
                                                           "checkpoints"))
                   if s.isdigit())
    self.assertEqual(steps[-1], 200)

  def test_bad_config_values_name_the_field(self):
    with self.assertRaisesRegex(ValueError, "config.batch_size"):
      train.build(small_config(batch_size=0))
    with self.assertRaisesRegex(ValueError, "Unknown estimator 'rebbar'"):
      train.build(small_config(estimator="rebbar"))
    with self.assertRaisesRegex(ValueError, "multiple of config.steps_per_call"):
      train.build(small_config(eval_every=150))

  def test_a_users_model_is_checked_before_training(self):
    """A relaxed signal that jumps (REBAR) and a protocol violation are
    refused by `build`, naming the fix; a sound estimator builds."""
    path = os.path.join(self.create_tempdir().full_path, "user_model.py")
    with open(path, "w") as f:
      f.write(_USER_MODEL)
    for model, estimator, message in (
        ("thresholded", "rebar", "must be continuous in b"),
        ("one_array", "disarm", r"log_joint\(x, bs\) returned an array")):
      with self.assertRaisesRegex(errors.ConfigError, message):
        train.build(small_config(model=f"{path}:{model}", estimator=estimator))
    train.build(small_config(model=f"{path}:thresholded", estimator="disarm"))

  def test_batch_indices_are_epoch_permutations(self):
    idx = train.batch_indices(0, 100, 10, 0, 10)
    self.assertCountEqual(idx.ravel().tolist(), list(range(100)))
    np.testing.assert_array_equal(train.batch_indices(0, 100, 10, 7, 5),
                                  train.batch_indices(0, 100, 10, 0, 12)[7:])

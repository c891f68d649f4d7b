r"""Categorical VAE (Jang et al. 2017): 30 variables x 10 classes, 784-512-256.

Trained with any categorical estimator (`rebar_jax.estimators.CATEGORICAL`),
by default Gumbel-softmax, here ARSM, on the embedded digits:

  python -m rebar_jax.train --config=configs/catvae_mnist.py \
      --config.estimator=arsm

Add --config.data_source=local for Larochelle's binarized MNIST from
$REBAR_JAX_DATA_DIR (written once by `python -m rebar_jax.data.prepare`);
docs/results/catvae_sbn3.md has the table made that way.

Estimators: reinforce, reinforce_loo, ars, arsm, ars_plus, arsm_plus,
disarm_stick_breaking, disarm_stick_breaking_rb (Rao-Blackwellised),
disarm_stick_breaking_iw (importance-weighted), carms, indecater,
unordered_set, gumbel_softmax, straight_through_gumbel, gumbel_rao, reinmax,
gapped_straight_through, rebar, relax, nvil (K samples of reinforce_loo,
carms, unordered_set: --config.loo_samples=K).
"""
from rebar_jax import defaults


def get_config():
  c = defaults.config()
  c.model = "categorical_vae"
  c.num_vars = 30
  c.num_classes = 10
  c.mlp_hidden = (512, 256)
  c.learned_prior = False
  c.estimator = "gumbel_softmax"
  c.temperature = 1.0
  c.batch_size = 100
  c.learning_rate = 1e-3
  c.num_steps = 5000
  return c

r"""A Gaussian VAE (OVIS, Fig. 4): 50 Gaussian latents, 784-200-200, tanh.

The one-layer Gaussian VAE of Burda et al. (2016), trained on the K-sample
bound with the pathwise IWAE gradient, DReG, or a score-function objective
that never differentiates through z (VIMCO, OVIS), on the embedded digits:

  python -m rebar_jax.train --config=configs/gaussian_vae_mnist.py \
      --config.estimator=dreg

  # OVIS-MC (K = 4 chains, S = 1 more for its control variate), trained on
  # the Renyi bound with alpha annealed from 0.9 to 0 over 2000 steps
  python -m rebar_jax.train --config=configs/gaussian_vae_mnist.py \
      --config.estimator=ovis_mc --config.iw_samples=4 --config.aux_samples=1 \
      --config.renyi_alpha=0.9 --config.renyi_warmup_steps=2000

Add --config.data_source=local for Larochelle's binarized MNIST from
$REBAR_JAX_DATA_DIR.

Estimators: iwae_pathwise, dreg (reparameterised); vimco_arithmetic,
vimco_geometric, ovis_gamma0, ovis_gamma0.5, ovis_gamma1, ovis_mc (with
aux_samples S >= 1), iwae_reinforce, rws, elbo_loo, vargrad (K-sample, score
function); pathwise, reinforce, reinforce_loo, nvil (one sample per data
point: they need --config.iw_samples=1 beside --config.estimator, since K = 5
here would be ignored and is refused).
"""
from rebar_jax import defaults


def get_config():
  c = defaults.config()
  c.model = "gaussian_vae"
  c.num_latents = 50
  c.mlp_hidden = (200, 200)
  c.estimator = "iwae_pathwise"
  c.iw_samples = 5
  c.batch_size = 20
  c.learning_rate = 1e-3
  c.num_steps = 5000
  return c

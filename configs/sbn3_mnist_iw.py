r"""Linear SBN with three stochastic layers of 200 units, trained on the
importance-weighted bound with a multi-sample estimator (OVIS, Sec. 5; VIMCO).

OVIS-gamma0 at K = 10 on the embedded digits:

  python -m rebar_jax.train --config=configs/sbn3_mnist_iw.py \
      --config.estimator=ovis_gamma0 --config.iw_samples=10

The thermodynamic variational objective (Masrani et al. 2019) on the same
model, 5 log-spaced points from beta_1 = 0.01 (OVIS Fig. 3, right):

  python -m rebar_jax.train --config=configs/sbn3_mnist_iw.py \
      --config.estimator=tvo --config.tvo_partitions=5 \
      --config.tvo_beta_min=0.01

Add --config.data_source=local for Larochelle's binarized MNIST from
$REBAR_JAX_DATA_DIR (written once by `python -m rebar_jax.data.prepare`);
docs/results/catvae_sbn3.md has the table made that way.

Estimators: iwae_reinforce, vimco_arithmetic, vimco_geometric, ovis_gamma0,
ovis_gamma0.5, ovis_gamma1 (biased for gamma > 0), ovis_mc (with
--config.aux_samples=S), rws, elbo_loo (REINFORCE with the leave-one-out
baseline over the K chains, for the ELBO), vargrad, tvo (biased, consistent
in K), disarm_iw (local DisARM per chain and layer, Dong et al. 2020). The
IW ones also train on the Renyi bound: --config.renyi_alpha,
--config.renyi_warmup_steps.
"""
from rebar_jax import defaults


def get_config():
  c = defaults.config()
  c.nonlinear = False
  c.num_layers = 3
  c.estimator = "vimco_geometric"
  c.iw_samples = 10
  c.learning_rate = 3e-4
  return c

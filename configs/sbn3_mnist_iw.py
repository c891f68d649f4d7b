r"""Linear SBN with three stochastic layers of 200 units, trained on the
importance-weighted bound with a multi-sample estimator (OVIS, Sec. 5; VIMCO).

  python -m rebar_jax.train --config=configs/sbn3_mnist_iw.py \
      --config.data_source=local --config.data_dir=$REBAR_JAX_DATA_DIR \
      --config.estimator=vimco_geometric --config.iw_samples=10
  python -m rebar_jax.train --config=configs/sbn3_mnist_iw.py \
      --config.estimator=ovis_gamma0 --config.iw_samples=50

Estimators: iwae_reinforce, vimco_arithmetic, vimco_geometric, ovis_gamma0,
ovis_gamma0.5, ovis_gamma1 (biased for gamma > 0), rws, reinforce_loo, vargrad.
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

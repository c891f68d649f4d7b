r"""Linear SBN with one stochastic layer (784-200), REBAR/RELAX table rows.

  python -m rebar_jax.train --config=configs/sbn_linear.py \
      --config.data_source=local --config.data_dir=$REBAR_JAX_DATA_DIR \
      --config.estimator=disarm

Two layers (784-200-200): configs/sbn_linear2.py.
"""
from rebar_jax import defaults


def get_config():
  c = defaults.config()
  c.nonlinear = False
  c.num_layers = 1
  return c

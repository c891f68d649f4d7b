r"""Linear SBN with two stochastic layers (784-200-200).

  python -m rebar_jax.train --config=configs/sbn_linear2.py

trains on the embedded digits; add --config.data_source=local for
Larochelle's binarized MNIST from $REBAR_JAX_DATA_DIR, as for
configs/sbn_linear.py.
"""
from rebar_jax import defaults


def get_config():
  c = defaults.config()
  c.nonlinear = False
  c.num_layers = 2
  return c

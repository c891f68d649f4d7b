r"""Linear SBN with one stochastic layer (784-200), REBAR/RELAX table rows.

DisARM on Larochelle's binarized MNIST (written once by
`python -m rebar_jax.data.prepare`, read from $REBAR_JAX_DATA_DIR):

  python -m rebar_jax.train --config=configs/sbn_linear.py \
      --config.data_source=local --config.estimator=disarm \
      --config.num_steps=30000 --config.eval_every=10000

Two layers (784-200-200): configs/sbn_linear2.py.
"""
from rebar_jax import defaults


def get_config():
  c = defaults.config()
  c.nonlinear = False
  c.num_layers = 1
  return c

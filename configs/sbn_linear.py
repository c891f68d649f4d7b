r"""Linear SBN with one stochastic layer (784-200), REBAR/RELAX table rows.

  python -m rebar_jax.train --config=configs/sbn_linear.py \
      --config.data_source=local --config.data_dir=../shared/data \
      --config.estimator=disarm

Two layers (784-200-200): --config=configs/sbn_linear2.py.
"""
from configs import sbn_mnist


def get_config():
  c = sbn_mnist.get_config()
  c.nonlinear = False
  c.num_layers = 1
  return c

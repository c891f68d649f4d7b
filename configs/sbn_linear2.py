r"""Linear SBN with two stochastic layers (784-200-200).

  python -m rebar_jax.train --config=configs/sbn_linear2.py \
      --config.data_source=local --config.data_dir=../shared/data
"""
from configs import sbn_mnist


def get_config():
  c = sbn_mnist.get_config()
  c.nonlinear = False
  c.num_layers = 2
  return c

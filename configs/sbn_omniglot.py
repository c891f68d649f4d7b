r"""Nonlinear SBN trained with REBAR on Omniglot (28x28, dynamic binarization).

  python -m rebar_jax.train --config=configs/sbn_omniglot.py \
      --config.data_dir=../shared/data

Omniglot is not embedded: it is read from a local directory holding
omniglot_background.npz and omniglot_evaluation.npz.
"""
from configs import sbn_mnist


def get_config():
  c = sbn_mnist.get_config()
  c.dataset = "omniglot"
  c.data_source = "local"
  c.data_dir = "../shared/data"
  return c

r"""Nonlinear SBN trained with REBAR on Omniglot (28x28, dynamic binarization).

  python -m rebar_jax.train --config=configs/sbn_omniglot.py

Omniglot is not embedded: it is read from $REBAR_JAX_DATA_DIR (or
--config.data_dir), a directory holding omniglot_background.npz and
omniglot_evaluation.npz, written by
`python -m rebar_jax.data.prepare --datasets=omniglot --data_dir=DIR`.
"""
from rebar_jax import defaults


def get_config():
  c = defaults.config()
  c.dataset = "omniglot"
  c.data_source = "local"
  return c

"""The linear SBN on the embedded digits, trained with examples/scaled_disarm.py.

    python -m rebar_jax.train --config=examples/scaled_disarm_config.py \
        --config.scale=0.5
"""
from configs import sbn_linear
from examples import scaled_disarm  # noqa: F401  (registers it and its option)


def get_config():
  c = sbn_linear.get_config()
  c.estimator = "scaled_disarm"
  return c

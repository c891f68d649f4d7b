r"""Nonlinear SBN trained with REBAR on binarized MNIST (REBAR Sec. 5.2.1).

One stochastic layer of 200 Bernoulli units with two deterministic tanh layers
of 200 on each side; batch 24, Adam 3e-4, temperature 0.5 (the hyperparameters
of the REBAR code; Tucker et al. 2017). By default it trains on the embedded
5000 MNIST digits for a few minutes on 2 CPU cores:

  python -m rebar_jax.train --config=configs/sbn_mnist.py

For the paper's data (Larochelle's binarized MNIST, written once by
`python -m rebar_jax.data.prepare` into $REBAR_JAX_DATA_DIR) add
--config.data_source=local, and for the paper's length
--config.num_steps=2000000 --config.eval_every=50000. Any field of
`rebar_jax.defaults.config` can be overridden, e.g. --config.estimator=disarm.
"""
from rebar_jax import defaults


def get_config():
  return defaults.config()

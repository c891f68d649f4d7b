r"""The DisARM paper's SBN protocol (Dong, Mnih & Tucker 2020, Sec. 5).

One stochastic layer of 200 Bernoulli units; nonlinear: two deterministic
hidden layers of 200 LeakyReLU(0.3) units on each side (linear: 784-200 with
--config.nonlinear=false); dynamically binarized MNIST (also Fashion-MNIST and
Omniglot: --config.dataset=fashion_mnist or omniglot); batch 50, Adam 1e-4,
1,000,000 steps, the test bound with 100 samples. By default it trains on the
embedded 5000 MNIST digits (binarized afresh at every step):

  python -m rebar_jax.train --config=configs/sbn_disarm.py

The paper's MNIST (written once by `python -m rebar_jax.data.prepare` into
$REBAR_JAX_DATA_DIR) is --config.data_source=local; the linear model is
--config.nonlinear=false. Any Bernoulli estimator can replace DisARM
(--config.estimator=arms, reinforce_loo, rebar, ...).
"""
from rebar_jax import defaults


def get_config():
  c = defaults.config()
  c.dataset = "mnist"            # dynamic binarization
  c.nonlinear = True
  c.activation = "leaky_relu"    # LeakyReLU(0.3)
  c.num_latents = c.hidden = 200
  c.estimator = "disarm"
  c.batch_size = 50
  c.learning_rate = 1e-4
  c.num_steps = 1_000_000
  c.eval_every = c.checkpoint_every = 50_000
  c.eval_num_samples = 100
  return c

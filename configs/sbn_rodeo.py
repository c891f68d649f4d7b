r"""The Double-CV / RODEO papers' SBN protocol (Titsias & Shi 2022; Shi et al.
2022): every estimator at the same number K of function evaluations per data
point.

The defaults of their single-layer launcher (thjashin/rodeo): one stochastic
layer of 200 Bernoulli units with two hidden layers of 200 LeakyReLU(0.3)
units on each side of it; dynamically binarized MNIST; batch 100, Adam 1e-3
(3e-4 for Fashion-MNIST: --config.dataset=fashion_mnist
--config.learning_rate=3e-4); 1,000,000 steps; the test bound with 100
samples. One difference: their prior logits stay fixed (prior_lr = 0), here
they are learned. RODEO at K = 2 by default (`loo_samples` is K for
rodeo, reinforce_loo, arms and double_cv; disarm is K = 2):

  python -m rebar_jax.train --config=configs/sbn_rodeo.py

At K = 3 evaluations: --config.loo_samples=3; the other estimators of the
comparison: --config.estimator=double_cv (or reinforce_loo, arms, disarm).
The paper's MNIST (written once by `python -m rebar_jax.data.prepare`
into $REBAR_JAX_DATA_DIR) is --config.data_source=local.
"""
from rebar_jax import defaults


def get_config():
  c = defaults.config()
  c.dataset = "mnist"            # dynamic binarization
  c.nonlinear = True
  c.activation = "leaky_relu"    # LeakyReLU(0.3)
  c.num_latents = c.hidden = 200
  c.estimator = "rodeo"
  c.loo_samples = 2              # K function evaluations per data point
  c.batch_size = 100
  c.learning_rate = 1e-3
  c.num_steps = 1_000_000
  c.eval_every = c.checkpoint_every = 50_000
  c.eval_num_samples = 100
  return c

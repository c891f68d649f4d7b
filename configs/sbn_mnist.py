r"""Nonlinear SBN trained with REBAR on binarized MNIST (REBAR Sec. 5.2.1).

One stochastic layer of 200 Bernoulli units with two deterministic tanh layers
of 200 on each side; batch 24, Adam 3e-4, temperature 0.5 (the hyperparameters
of the REBAR code, seed 000). By default it trains on the embedded 5000 MNIST
digits for a few minutes on 2 CPU cores:

  python -m rebar_jax.train --config=configs/sbn_mnist.py

The paper's data (Larochelle's binarized MNIST) from a local directory, or
through tensorflow-datasets:

  python -m rebar_jax.train --config=configs/sbn_mnist.py \
      --config.data_source=local --config.data_dir=../shared/data \
      --config.num_steps=2000000 --config.eval_every=50000 \
      --config.checkpoint_every=10000
  python -m rebar_jax.train --config=configs/sbn_mnist.py \
      --config.data_source=tfds

Any field can be overridden, e.g. --config.estimator=disarm.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Data: see rebar_jax.data.load_dataset.
  c.dataset = "binarized_mnist"
  c.data_source = "embedded"  # "embedded" | "local" | "tfds"
  c.data_dir = ""             # the directory for "local" (manual dir for tfds)
  # Model.
  c.model = "sbn"
  c.num_layers = 1
  c.nonlinear = True
  c.num_latents = 200
  c.hidden = 200
  # Estimator: a name of rebar_jax.estimators.BERNOULLI, "nvil", or a
  # multi-sample objective of rebar_jax.estimators.multisample (with K below).
  c.estimator = "rebar"
  c.temperature = 0.5           # lambda (initial value when tuned)
  c.eta = 1.0                   # REBAR's scale (initial value when tuned)
  c.estimator_num_samples = 2   # n of reinforce_loo
  c.tune_estimator = True       # train eta/lambda, RELAX nets on the variance
  c.relax_hidden = (50,)
  # K samples per data point for the multi-sample objectives
  # (rebar_jax.estimators.multisample: vimco_geometric, ovis_gamma0, ...).
  c.num_samples = 1
  # Optimisation.
  c.batch_size = 24
  c.learning_rate = 3e-4
  c.estimator_learning_rate = 3e-4
  c.num_steps = 20000
  c.steps_per_call = 100
  # Evaluation and checkpoints.
  c.eval_every = 5000
  c.eval_num_samples = 100     # K of the importance-weighted bound
  c.eval_batch_size = 100
  c.eval_max_examples = 0      # 0: the whole split
  c.eval_seed = 1234           # fixed: bounds compare across checkpoints
  c.checkpoint_every = 5000
  # At every evaluation: encoder-gradient log-variance and SNR over this many
  # draws on a fixed training batch, ESS of the K-sample weights, active units
  # (0 or 1 turns them off).
  c.diagnostic_draws = 16
  c.progress_bar = True
  return c

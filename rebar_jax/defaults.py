"""The default training configuration: every field `rebar_jax.train` reads.

`config()` is the nonlinear SBN of the REBAR paper trained with REBAR on the
embedded digits (configs/sbn_mnist.py); the files in configs/ start from it and
change what their experiment needs, so they work from any directory:

    from rebar_jax import defaults

    def get_config():
      c = defaults.config()
      c.nonlinear = False
      return c

Every field can be overridden on the command line, e.g.
--config.estimator=disarm.
"""
import ml_collections


def config() -> ml_collections.ConfigDict:
  """The default configuration (see the comments for each field)."""
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
  c.activation = "tanh"         # nonlinear SBN: "tanh" | "leaky_relu" (0.3)
  # Estimator: a name of rebar_jax.estimators.BERNOULLI, "nvil",
  # "muprop_baseline", or a multi-sample objective of
  # rebar_jax.estimators.multisample (MULTISAMPLE or LOCAL, with K below);
  # for Gaussian latents (model "gaussian_vae") also "pathwise",
  # "iwae_pathwise" and "dreg".
  c.estimator = "rebar"
  c.temperature = 0.5           # lambda (initial value when tuned)
  c.eta = 1.0                   # REBAR's scale (initial value when tuned)
  # K: reinforce_loo, arms, double_cv, rodeo, carms, unordered_set
  c.loo_samples = 2
  c.copula = "dirichlet"        # ARMS's antithetic copula (or "gaussian")
  c.alpha = 0.0                 # double_cv and rodeo: initial CV scale (tuned)
  c.tune_estimator = True       # train eta/lambda, RELAX nets on the variance
  c.relax_hidden = (50,)
  # K chains per data point for the multi-sample objectives
  # (rebar_jax.estimators.multisample: vimco_geometric, ovis_gamma0, ...).
  c.iw_samples = 1
  # S auxiliary chains per data point that only estimate OVIS-MC's control
  # variate (estimator "ovis_mc"; a budget of K + S chains); 0 otherwise.
  c.aux_samples = 0
  # The Renyi bound (IWR) L_K^alpha instead of L_K for the score-function
  # IW objectives and iwae_pathwise; with renyi_warmup_steps > 0, alpha falls
  # linearly to 0 over those steps (OVIS's Renyi warm-up).
  c.renyi_alpha = 0.0
  c.renyi_warmup_steps = 0
  # The TVO's partition (estimator "tvo"): 0, then tvo_partitions points
  # log-spaced from tvo_beta_min to 1.
  c.tvo_partitions = 5
  c.tvo_beta_min = 0.01
  # Optimisation.
  c.batch_size = 24
  c.learning_rate = 3e-4
  c.estimator_learning_rate = 3e-4
  c.num_steps = 20000
  c.steps_per_call = 100
  # Data parallelism (rebar_jax/parallel.py): the batch is sharded over this
  # many of this process's devices (0: all); the gradients equal one
  # device's to float rounding.
  c.num_devices = 1
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
  # Stop when the mean training ELBO of a chunk of steps falls more than this
  # many nats below its value at initialisation (a diverged run; NaN/inf stop
  # it anyway). float("inf") turns the guard off.
  c.divergence_threshold = 1000.0
  c.progress_bar = True
  return c

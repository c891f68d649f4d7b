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

from rebar_jax.estimators import options


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
  # Estimator: a name of the registry (rebar_jax.estimators.registry: a
  # layer estimator such as "disarm" or "nvil", or a multi-sample objective
  # such as "vimco_geometric" with iw_samples = K), or "family:name" pairs for
  # a model mixing families ("bernoulli:disarm,categorical:arsm").
  c.estimator = "rebar"
  # The estimators' options, each with its schema default
  # (rebar_jax.estimators.options.OPTIONS says what each means and accepts);
  # an option the chosen estimator does not read must keep its default.
  for option in options.OPTIONS.values():
    c[option.field] = option.default
  # estimator="auto": the advisor (rebar_jax.advise, ranking by variance x
  # f evaluations) chooses the estimator at step 0 and every advise_every
  # steps (0: once), among advise_candidates (comma-separated names; "":
  # the registry's short list, registry.Entry.auto; "all": every one that
  # applies); each decision is recorded in run.json.
  c.advise_every = 0
  c.advise_candidates = ""
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

"""What a training run raises (`rebar_jax.train.train_and_evaluate`).

`ConfigError` is the user's to fix before anything is written (the message
names the config field); `TrainingStopped` and `Interrupted` stop a run that
went wrong or was told to stop, after keeping or saving a checkpoint.
"""
import signal


class ConfigError(ValueError):
  """A configuration value that cannot be used; the message names the field."""


class TrainingStopped(FloatingPointError):
  """A non-finite or diverged training run; the last checkpoint is kept."""


class Interrupted(Exception):
  """SIGINT, SIGTERM or SIGHUP stopped the run after saving a checkpoint."""

  def __init__(self, signum: int, step: int, workdir: str):
    self.signum, self.step = signum, step
    super().__init__(
        f"Stopped by {signal.Signals(signum).name} at step {step}; the "
        f"checkpoint is saved in {workdir}/checkpoints. Run the same command "
        "to resume.")

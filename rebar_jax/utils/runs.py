"""What makes a workdir one run: its identity record and its lock.

* `RunRecord` (`<workdir>/run.json`): the configuration a run was started with,
  the fingerprint of its data, and the history of its starts, resumptions and
  accepted configuration changes. Resuming compares the new configuration and
  data with the record: a difference in anything that changes the results is
  refused (`identity_changes`), listing the fields, before anything is written.
* `WorkdirLock` (`<workdir>/lock`): an OS file lock (fcntl.flock) held for the
  life of the run, so two processes never write one workdir. The OS releases it
  when the process dies, however it dies, so a stale lock never blocks.
"""
import fcntl
import json
import os
import socket
import time
from typing import Any, Optional

RECORD_FILE = "run.json"
LOCK_FILE = "lock"

# Config fields that cannot change a run's results: they may differ when a
# run is resumed (e.g. num_steps to extend it). Everything else must match.
RESULT_FREE_FIELDS = frozenset({
    "num_steps",          # extending (or shortening) a run
    "progress_bar",
    "steps_per_call",     # keys and batches are functions of the step alone
    "num_devices",        # data parallelism: the same numbers to rounding
    "eval_every",         # evaluation never touches the training state
    "eval_batch_size",    # evaluation results do not depend on it
    "checkpoint_every",
    "diagnostic_draws",   # logged diagnostics only
    "divergence_threshold",  # a guard; the trajectory is the same
    "data_dir",           # the data themselves are compared by fingerprint
})


# Fields added after runs were recorded without them, with the value that
# reproduces what those runs did: a record that lacks one holds this value.
ADDED_FIELDS = {
    "activation": "tanh",  # the nonlinear SBN's hidden units
    "aux_samples": 0,  # OVIS-MC's auxiliary chains
    "renyi_alpha": 0.0,  # the Renyi bound's alpha
    "renyi_warmup_steps": 0,
    "tvo_partitions": 5,  # the TVO's partition
    "tvo_beta_min": 0.01,
}


class WorkdirError(RuntimeError):
  """The workdir cannot be used as asked: locked, or another run's."""


def _normalise(value: Any) -> Any:
  """JSON round trip: tuples become lists, so records compare with configs."""
  return json.loads(json.dumps(value))


def identity_changes(recorded: dict[str, Any], config: dict[str, Any],
                     recorded_data: Optional[str], data: str
                     ) -> dict[str, tuple[Any, Any]]:
  """{field: (recorded value, new value)} for every result-changing field.

  The data fingerprint is compared under the name "data (sha256)".
  """
  config = _normalise(config)
  changes = {}
  for name in sorted(set(recorded) | set(config)):
    if name in RESULT_FREE_FIELDS:
      continue
    old = recorded.get(name, ADDED_FIELDS.get(name, "<absent>"))
    new = config.get(name, "<absent>")
    if old != new:
      changes[name] = (old, new)
  if recorded_data != data:
    changes["data (sha256)"] = (recorded_data, data)
  return changes


class RunRecord:
  """`<workdir>/run.json`: config, data fingerprint and history of one run."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, RECORD_FILE)
    self.data: Optional[dict[str, Any]] = None
    if os.path.exists(self.path):
      try:
        with open(self.path) as fh:
          self.data = json.load(fh)
        self.data["config"], self.data["data_sha256"]  # pylint: disable=pointless-statement
      except (ValueError, KeyError, TypeError) as e:
        raise WorkdirError(
            f"{self.path} is unreadable ({type(e).__name__}: {e}): this "
            "workdir's identity is unknown, so it cannot be resumed. Use a "
            "new --workdir.") from e

  @property
  def exists(self) -> bool:
    return self.data is not None

  def changes(self, config: dict[str, Any], data_sha256: str
              ) -> dict[str, tuple[Any, Any]]:
    return identity_changes(self.data["config"], config,
                            self.data["data_sha256"], data_sha256)

  def write(self, config: dict[str, Any], data_sha256: str, step: int,
            event: str, changes: Optional[dict[str, Any]] = None) -> None:
    """Records `event` at `step`; the config becomes the current one."""
    history = list(self.data["history"]) if self.data else []
    entry = {"step": step, "event": event,
             "time": time.strftime("%Y-%m-%d %H:%M:%S"),
             "host": socket.gethostname(), "pid": os.getpid()}
    if changes:
      entry["changes"] = {k: {"from": a, "to": b} for k, (a, b)
                          in changes.items()}
    history.append(entry)
    self.data = {"config": _normalise(config), "data_sha256": data_sha256,
                 "history": history}
    tmp = self.path + ".tmp"
    with open(tmp, "w") as fh:
      json.dump(self.data, fh, indent=2)
    os.replace(tmp, self.path)


def is_locked(workdir: str) -> bool:
  """Whether a live process holds `<workdir>/lock` (nothing is written)."""
  path = os.path.join(workdir, LOCK_FILE)
  if not os.path.exists(path):
    return False
  with open(path) as fh:
    try:
      fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      return True
    fcntl.flock(fh, fcntl.LOCK_UN)
  return False


class WorkdirLock:
  """An exclusive, non-blocking OS lock on `<workdir>/lock` (a context manager).

  The lock file holds the holder's pid and host, for the error message of a
  second process. The OS drops the lock when the holder exits or is killed.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fh = None

  def __enter__(self) -> "WorkdirLock":
    fh = open(self.path, "a+")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      fh.seek(0)
      holder = fh.read().strip() or "an unknown process"
      fh.close()
      raise WorkdirError(
          f"{os.path.dirname(self.path) or '.'} is in use by {holder} (it "
          f"holds {self.path}). Wait for that run to finish or stop it, or "
          "use another --workdir.") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"process {os.getpid()} on {socket.gethostname()} since "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    fh.flush()
    self._fh = fh
    return self

  def __exit__(self, *exc) -> None:
    if self._fh is not None:
      fcntl.flock(self._fh, fcntl.LOCK_UN)
      self._fh.close()
      self._fh = None

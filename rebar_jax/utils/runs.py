"""What makes a workdir one run: its identity record and its lock.

* `RunRecord` (`<workdir>/run.json`): the configuration a run was started with,
  the fingerprint of its data, and the history of its starts, resumptions and
  accepted configuration changes. Resuming compares the new configuration and
  data with the record: a difference in anything that changes the results is
  refused (`identity_changes`), listing the fields, before anything is written.
* `WorkdirLock`: an OS lock (fcntl.flock) on the workdir directory itself,
  held for the life of the run, so two processes never write one workdir. The
  OS releases it when the process dies, however it dies, so a stale lock never
  blocks; deleting the `lock` file (which only names the holder) does not
  release it.
"""
import fcntl
import importlib.metadata
import json
import os
import socket
import time
from typing import Any, Optional

from rebar_jax.estimators import options

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
    "eval_batch_size",    # evaluation results equal to float rounding
    "checkpoint_every",
    "diagnostic_draws",   # logged diagnostics only
    "divergence_threshold",  # a guard; the trajectory is the same
    "data_dir",           # the data themselves are compared by fingerprint
})


# Fields added after runs were recorded without them, with the value that
# reproduces what those runs did: a record that lacks one holds this value.
ADDED_FIELDS = {
    "activation": "tanh",  # the nonlinear SBN's hidden units
    "advise_every": 0,  # estimator=auto's decisions
    "advise_candidates": "",
    # Every estimator option, added or not: its default is what the runs
    # recorded without it did (aux_samples, renyi_*, tvo_*, rodeo_hidden and
    # nvil_decay were added so).
    **{o.field: o.default for o in options.OPTIONS.values()},
}


class WorkdirError(RuntimeError):
  """The workdir cannot be used as asked: locked, or another run's."""


def write_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file and a rename.

  Raises:
    OSError: naming `path` (a full disk's write error names no file); the
      temporary file is removed.
  """
  tmp = path + ".tmp"
  try:
    with open(tmp, "w") as fh:
      fh.write(text)
    os.replace(tmp, path)
  except OSError as e:
    try:
      os.remove(tmp)
    except OSError:
      pass
    raise OSError(e.errno, e.strerror, path) from e


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


def software_versions() -> dict[str, str]:
  """The versions that bit-exact results depend on: jax, jaxlib, rebar_jax."""
  out = {}
  for name in ("jax", "jaxlib", "rebar_jax"):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      if name == "rebar_jax":
        import rebar_jax  # pylint: disable=g-import-not-at-top
        out[name] = rebar_jax.__version__
      else:
        out[name] = "unknown"
  return out


class RunRecord:
  """`<workdir>/run.json`: config, data fingerprint, software versions and
  history of one run. Fields it does not know are kept on rewrite."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, RECORD_FILE)
    self.data: Optional[dict[str, Any]] = None
    if os.path.lexists(self.path):
      try:
        with open(self.path) as fh:
          self.data = json.load(fh)
        if not isinstance(self.data, dict):
          raise TypeError(f"a {type(self.data).__name__}, not an object")
        for key, kind in (("config", dict), ("data_sha256", str),
                          ("history", list)):
          if not isinstance(self.data[key], kind):
            raise TypeError(f"{key!r} is a {type(self.data[key]).__name__}, "
                            f"not a {kind.__name__}")
      except (OSError, ValueError, KeyError, TypeError) as e:
        raise WorkdirError(
            f"{self.path} is unreadable ({type(e).__name__}: {e}): this "
            "workdir's identity is unknown, so it cannot be resumed. Use a "
            "new --workdir.") from e

  def version_changes(self) -> dict[str, tuple[str, str]]:
    """{package: (recorded, running)} where the software differs from the
    record's (a record written before versions were recorded: {})."""
    recorded = (self.data or {}).get("versions")
    if not isinstance(recorded, dict):
      return {}
    return {k: (recorded.get(k, "<unrecorded>"), v)
            for k, v in software_versions().items() if recorded.get(k) != v}

  @property
  def exists(self) -> bool:
    return self.data is not None

  def changes(self, config: dict[str, Any], data_sha256: str
              ) -> dict[str, tuple[Any, Any]]:
    assert self.data is not None, "no record to compare with (exists False)"
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
    versions = software_versions()
    if self.data and self.data.get("versions") != versions:
      entry["versions"] = versions
    history.append(entry)
    self.data = {**(self.data or {}), "config": _normalise(config),
                 "data_sha256": data_sha256, "versions": versions,
                 "history": history}
    write_atomic(self.path, json.dumps(self.data, indent=2))

  def advice(self) -> dict[int, dict[str, Any]]:
    """{step: decision} of an estimator=auto run (`add_advice`)."""
    return {int(d["step"]): d for d in (self.data or {}).get("advice", [])}

  def add_advice(self, step: int, estimator: str, reason: str,
                 table: str) -> None:
    """Records an estimator=auto decision: from `step` on, `estimator`;
    also a history event. A resumed run reuses it (never decides again)."""
    assert self.data is not None, "the run is recorded before it is advised"
    decision = {"step": step, "estimator": estimator, "reason": reason,
                "table": table}
    self.data["advice"] = list(self.data.get("advice", [])) + [decision]
    self.data["history"] = list(self.data["history"]) + [
        {"step": step, "event": "advice", "estimator": estimator,
         "time": time.strftime("%Y-%m-%d %H:%M:%S")}]
    write_atomic(self.path, json.dumps(self.data, indent=2))


def _holder(path: str) -> str:
  try:
    with open(path) as fh:
      return fh.read().strip() or "an unknown process"
  except OSError:
    return "an unknown process"


def _try_lock(workdir: str) -> Optional[int]:
  """A descriptor of `workdir` holding its exclusive lock, or None if a live
  process holds it."""
  fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    os.close(fd)
    return None
  return fd


def is_locked(workdir: str) -> bool:
  """Whether a live process holds `workdir`'s lock (nothing is written)."""
  if not os.path.isdir(workdir):
    return False
  fd = _try_lock(workdir)
  if fd is None:
    return True
  fcntl.flock(fd, fcntl.LOCK_UN)
  os.close(fd)
  return False


def workdir_gone(workdir: str) -> WorkdirError:
  """The error of a run whose workdir was deleted while it was going."""
  return WorkdirError(f"the workdir {workdir} is gone (deleted while the run "
                      "was going); run the same command to start again.")


class WorkdirLock:
  """An exclusive, non-blocking OS lock on the workdir (a context manager).

  The lock is on the directory itself, which a user does not delete while
  keeping the run; `<workdir>/lock` only holds the holder's pid and host, for
  the error message of a second process. The OS drops the lock when the holder
  exits or is killed.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir or "."
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self._fd: Optional[int] = None

  def __enter__(self) -> "WorkdirLock":
    if os.path.isdir(self.path):
      raise WorkdirError(
          f"{self.path} is a directory, where rebar_jax keeps a file naming "
          "the run's process; remove it (rmdir) and rerun.")
    fd = _try_lock(self.workdir)
    if fd is None:
      raise WorkdirError(
          f"{self.workdir} is in use by {_holder(self.path)} (it holds the "
          "workdir's lock). Wait for that run to finish or stop it, or use "
          "another --workdir.")
    try:
      write_atomic(self.path, f"process {os.getpid()} on "
                   f"{socket.gethostname()} since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    except BaseException:
      os.close(fd)
      raise
    self._fd = fd
    return self

  def check(self) -> None:
    """Raises WorkdirError if the locked workdir was deleted or replaced."""
    if self._fd is None:
      return
    held = os.fstat(self._fd)
    try:
      now = os.stat(self.workdir)
      same = (now.st_ino, now.st_dev) == (held.st_ino, held.st_dev)
    except FileNotFoundError:
      same = False
    if not same or held.st_nlink == 0:
      raise workdir_gone(self.workdir)

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

"""Checkpoints of a pytree train state with orbax, verified by a digest.

Every checkpoint `directory/<step>/` gets, once orbax has finished writing it,
a file `DIGEST_FILE` listing the sha256 of every other file in it. Restoring
verifies the digest first: a checkpoint whose files were truncated, deleted,
flipped or replaced (or that has no digest because the process died while
writing it) is reported by path, moved aside to `<workdir>/damaged_checkpoints/`
and never restored; the newest intact checkpoint is used instead.

One exception: a checkpoint with no digest that orbax marks complete (its
commit timestamp written, the directory renamed from orbax's temporary name)
and that restores is a process killed between orbax's last write and the
digest's; its digest is written then and it is used (`Checkpointer.adopted`).

A full disk while saving raises OSError(ENOSPC) naming the checkpoint, after
removing orbax's temporary directories. While a save runs, and after one
fails, only the main thread writes to `sys.stderr`: orbax's and tensorstore's
threads print tracebacks of their own cleanup ("Event loop is closed") when a
save fails, and the raised error says all there is.
"""
import dataclasses
import errno
import hashlib
import json
import os
import pathlib
import shutil
import sys
import threading
import time
from typing import Any, Optional, TextIO

from absl import logging as absl_logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

DIGEST_FILE = "rebar_jax_digest.json"
ORBAX_METADATA = "_CHECKPOINT_METADATA"
NO_DIGEST = "it has no digest"


class CheckpointError(RuntimeError):
  """No intact checkpoint can be restored, or it does not fit the state."""


@dataclasses.dataclass(frozen=True)
class Damaged:
  """A checkpoint that failed verification: where it was, why, where it is."""
  step: int
  path: pathlib.Path
  reason: str
  moved_to: pathlib.Path


def _file_digests(step_dir: pathlib.Path) -> dict[str, str]:
  """{relative path: sha256} of every file under step_dir but the digest."""
  out = {}
  for path in sorted(step_dir.rglob("*")):
    if path.is_file() and path.name != DIGEST_FILE:
      out[str(path.relative_to(step_dir))] = hashlib.sha256(
          path.read_bytes()).hexdigest()
  return out


def write_digest(step_dir: pathlib.Path) -> None:
  """Writes DIGEST_FILE into a finished checkpoint (atomically)."""
  tmp = step_dir / (DIGEST_FILE + ".tmp")
  tmp.write_text(json.dumps({"files": _file_digests(step_dir)}, indent=1))
  os.replace(tmp, step_dir / DIGEST_FILE)


def orbax_complete(step_dir: pathlib.Path) -> bool:
  """Whether orbax finished writing `step_dir` (its commit timestamp)."""
  try:
    meta = json.loads((step_dir / ORBAX_METADATA).read_text())
    return bool(meta.get("commit_timestamp_nsecs"))
  except (OSError, ValueError, AttributeError):
    return False


def is_disk_full(e: Optional[BaseException]) -> bool:
  """Whether `e` (or an exception it chains) says the disk is full."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


def verify(step_dir: pathlib.Path) -> Optional[str]:
  """None if the checkpoint matches its digest, else what is wrong."""
  digest_path = step_dir / DIGEST_FILE
  if not digest_path.is_file():
    return (f"{NO_DIGEST}: the process stopped while writing it, or it "
            "was written by another program")
  try:
    recorded = json.loads(digest_path.read_text())["files"]
  except (ValueError, KeyError, TypeError) as e:
    return f"its digest file is unreadable ({type(e).__name__}: {e})"
  found = _file_digests(step_dir)
  missing = sorted(set(recorded) - set(found))
  extra = sorted(set(found) - set(recorded))
  changed = sorted(p for p in set(recorded) & set(found)
                   if recorded[p] != found[p])
  problems = []
  if missing:
    problems.append(f"missing files {missing}")
  if changed:
    problems.append(f"files whose content changed {changed}")
  if extra:
    problems.append(f"unexpected files {extra}")
  return "; ".join(problems) or None


class _MainThreadOnly:
  """A text stream that passes on the main thread's writes and drops others'."""

  def __init__(self, stream: TextIO):
    self.stream = stream

  def write(self, text: str) -> int:
    if threading.current_thread() is threading.main_thread():
      return self.stream.write(text)
    return len(text)

  def __getattr__(self, name: str) -> Any:
    return getattr(self.stream, name)


class Checkpointer:
  """Saves and restores a pytree under `directory/<step>`, verified.

  Saving is synchronous: the train step donates its state buffers, so the
  arrays must be on the host before the next step runs; the digest is written
  after orbax has finished.

  Args:
    directory: the checkpoint directory (created on the first save).
    max_to_keep: how many of the newest checkpoints are kept; the older ones
      are the fallback when the newest is damaged.
    damaged_dir: where damaged checkpoints are moved; defaults to
      `<directory>/../damaged_checkpoints`.
  """

  def __init__(self, directory: str, max_to_keep: int = 3,
               damaged_dir: Optional[str] = None):
    self.directory = pathlib.Path(directory).absolute()
    self.damaged_dir = pathlib.Path(
        damaged_dir or self.directory.parent / "damaged_checkpoints")
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True,
        enable_async_checkpointing=False)
    self._manager = None
    # Digest-less checkpoints that orbax had finished, given a digest by
    # `restore_latest_intact`.
    self.adopted: list[pathlib.Path] = []

  @property
  def manager(self) -> ocp.CheckpointManager:
    if self._manager is None:
      self._manager = ocp.CheckpointManager(self.directory,
                                            options=self._options)
    return self._manager

  def steps(self) -> list[int]:
    """Steps of the checkpoint directories present, oldest first."""
    if not self.directory.is_dir():
      return []
    return sorted(int(p.name) for p in self.directory.iterdir()
                  if p.is_dir() and p.name.isdigit())

  def latest_step(self) -> Optional[int]:
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any) -> None:
    """Saves (every process of a multi-process run calls it; process 0
    writes the digest)."""
    # orbax's writer threads log each failure with a traceback before the
    # save raises it; the raised error is enough (and a full disk is turned
    # into one line below).
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.FATAL)
    stderr = sys.stderr
    sys.stderr = _MainThreadOnly(stderr)
    try:
      self.manager.save(step, args=ocp.args.StandardSave(state))
      self.manager.wait_until_finished()
      if jax.process_index() == 0:
        write_digest(self.directory / str(step))
    except Exception as e:  # pylint: disable=broad-except
      if not is_disk_full(e):
        raise
      self.remove_temporary()
      raise OSError(errno.ENOSPC, "No space left on device",
                    str(self.directory / str(step))) from None
    else:  # a failed save (a full disk, a second Ctrl-C) keeps the filter
      sys.stderr = stderr
    finally:
      absl_logging.set_verbosity(verbosity)

  def remove_temporary(self) -> None:
    """Removes orbax's unfinished temporary checkpoint directories."""
    if self.directory.is_dir():
      for path in self.directory.iterdir():
        if ".orbax-checkpoint-tmp" in path.name:
          shutil.rmtree(path, ignore_errors=True)

  def _move_aside(self, step: int, reason: str) -> Damaged:
    path = self.directory / str(step)
    self.damaged_dir.mkdir(parents=True, exist_ok=True)
    target = self.damaged_dir / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 0
    while target.exists():
      suffix += 1
      target = target.with_name(f"{target.name}.{suffix}")
    shutil.move(str(path), str(target))
    return Damaged(step, path, reason, target)

  def restore_latest_intact(self, like: Any
                            ) -> tuple[Optional[Any], list[Damaged]]:
    """The newest checkpoint that passes verification, shaped like `like`.

    Damaged checkpoints met on the way (newest first) are moved aside and
    returned, so the caller can say what happened.

    Returns:
      (state or None when there is no checkpoint at all, damaged ones).

    Raises:
      CheckpointError: checkpoints exist but none is intact, or the intact
        one does not have the structure of `like`.
    """
    damaged: list[Damaged] = []
    chosen = -1
    if jax.process_index() == 0:  # in a multi-process run, process 0 decides
      for step in reversed(self.steps()):
        step_dir = self.directory / str(step)
        reason = verify(step_dir)
        if reason is not None and reason.startswith(NO_DIGEST) and (
            jax.process_count() == 1 and orbax_complete(step_dir)):
          try:  # killed between orbax's last write and the digest's
            state = self.manager.restore(
                step, args=ocp.args.StandardRestore(like))
          except Exception as e:  # pylint: disable=broad-except
            reason += (f"; orbax marks it complete but it does not restore "
                       f"({type(e).__name__})")
          else:
            write_digest(step_dir)
            self.adopted.append(step_dir)
            return state, damaged
          self._manager = None
        if reason is None:
          chosen = step
          break
        damaged.append(self._move_aside(step, reason))
      if damaged and chosen < 0:
        chosen = -2  # none intact
    if jax.process_count() > 1:
      chosen = int(multihost_utils.broadcast_one_to_all(np.int32(chosen)))
    if chosen >= 0:
      self._manager = None  # re-scan: damaged steps were moved away
      try:
        state = self.manager.restore(chosen,
                                     args=ocp.args.StandardRestore(like))
      except Exception as e:  # pylint: disable=broad-except
        raise CheckpointError(
            f"The intact checkpoint {self.directory / str(chosen)} does not "
            f"fit this run's state ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300]}). It was written by another "
            "configuration or version; start a new workdir.") from e
      return state, damaged
    if chosen == -2:
      listing = "; ".join(f"{d.path} ({d.reason})" for d in damaged) or (
          "see process 0")
      raise CheckpointError(
          f"No intact checkpoint in {self.directory}: {listing}. They were "
          f"moved to {self.damaged_dir}. Start the run again in a new workdir "
          "(or delete this one).")
    return None, damaged

  def restore(self, like: Any, step: Optional[int] = None) -> Any:
    """The checkpoint at `step` (default: the latest), verified, read-only.

    For reading another run's checkpoint (scripts): nothing is moved.

    Raises:
      CheckpointError: no checkpoint, or it fails verification.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint in {self.directory}.")
    reason = verify(self.directory / str(step))
    if reason is not None:
      raise CheckpointError(
          f"Checkpoint {self.directory / str(step)} is damaged: {reason}.")
    return self.manager.restore(step, args=ocp.args.StandardRestore(like))

  def wait(self) -> None:
    if self._manager is not None:
      self._manager.wait_until_finished()

"""Checkpoints of a pytree train state with orbax (synchronous, keeps the last few)."""
import os
from typing import Any, Optional

import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores a pytree under `directory/<step>`.

  Saving is synchronous: the train step donates its state buffers, so the
  arrays must be on the host before the next step runs.
  """

  def __init__(self, directory: str, max_to_keep: int = 2):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=False))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    self._manager.save(step, args=ocp.args.StandardSave(state))

  def restore(self, like: Any, step: Optional[int] = None) -> Any:
    """The checkpoint at `step` (default: latest), shaped like `like`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self._manager.directory}.")
    return self._manager.restore(step, args=ocp.args.StandardRestore(like))

  def wait(self) -> None:
    self._manager.wait_until_finished()

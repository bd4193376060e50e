"""Small helpers of the training loop: when to act, how far the host may run ahead, a clock of training time, and
files written whole or not at all."""

from __future__ import annotations

import collections
import contextlib
import os
import time
from pathlib import Path

import jax


def atomic_write(path: Path, text: str) -> None:
  """Writes a file through a temporary one, so a kill never leaves half a file.

  Args:
    path: the file.
    text: its content.
  """
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def first_few(items: list[str], limit: int) -> str:
  """What a one-line error lists: the first few items, and how many more there are.

  Args:
    items: the items.
    limit: how many to show.

  Returns:
    The first `limit` of `items` joined by '; ', then '; and N more'.
  """
  return "; ".join(items[:limit]) + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def itstime(step: int, every: int, total: int) -> bool:
  """Whether a periodic action is due after a step.

  Args:
    step: the steps done.
    every: the action's interval in steps.
    total: the run's total (the action is also due at the last step).

  Returns:
    True when `step` is a multiple of `every` or the total.
  """
  return step % every == 0 or step == total


class DispatchWindow:
  """Keeps at most `depth` jitted calls in flight: the host waits for the oldest once it is `depth` calls ahead.

  JAX dispatches asynchronously, so a loop that never reads its results runs ahead of the devices without bound. On
  XLA:CPU with several devices that deadlocks: each device admits a bounded number of computations in flight, a
  multi-device program's per-device launches take those slots in no fixed order, and a later step holding a slot on
  one device waits for an earlier step that cannot start there, whose collectives then time out on the other devices
  (`Termination timeout for all gather RendezvousKey ...`, exit status 134; docs/devices.md). A small window keeps
  every queue short on every backend and costs nothing while the devices are the bottleneck. `add(token)` after each
  call, with an output of that call that is not donated to a later one.

  Args:
    depth: the calls allowed in flight (>= 1).

  Raises:
    ValueError: a depth below 1.
  """

  def __init__(self, depth: int):
    if depth < 1:
      raise ValueError(f"depth must be >= 1; got {depth}.")
    self.depth = depth
    self._pending: collections.deque = collections.deque()

  def add(self, token) -> None:
    """Records a call just dispatched; waits for the oldest calls while more than `depth` are in flight.

    Args:
      token: an output of that call that is not donated to a later one.
    """
    self._pending.append(token)
    while len(self._pending) > self.depth:
      jax.block_until_ready(self._pending.popleft())


class Chrono:
  """Training wall time, with the intervals that are not training excluded explicitly.

  The clock starts stopped; `resume(step)` starts it, `pause(wait_for=...)` waits for the device work in `wait_for`
  to finish and stops it, and `with chrono.excluded(wait_for=...)` leaves a block (evaluation, checkpointing) out.
  The trainer starts it once the first step of a process has finished, so compilation is never counted.
  `lap(step, name)` gives the steps per second of counted time since the previous lap of that name (or since the
  clock first started).

  Args:
    total: the counted seconds carried across resumes.
  """

  def __init__(self, total: float = 0.0):
    self.total = total
    self._since: float | None = None  # perf_counter() when the clock last started; None while stopped
    self._start: tuple[int, float] | None = None  # (step, total) when the clock first started
    self._marks: dict[str, tuple[int, float]] = {}

  @property
  def running(self) -> bool:
    """Whether the clock is counting now."""
    return self._since is not None

  def resume(self, step: int) -> None:
    """Starts counting, at training step `step`.

    Args:
      step: the training step the clock starts at (its first start is where the first `lap` counts from).
    """
    if self._start is None:
      self._start = (step, self.total)
    self._since = time.perf_counter()

  def pause(self, wait_for=None) -> None:
    """Waits for the device work in `wait_for` to finish, then stops the clock.

    Args:
      wait_for: arrays (a tree) to wait for first, or None.
    """
    if wait_for is not None:
      jax.block_until_ready(wait_for)
    if self._since is not None:
      self.total += time.perf_counter() - self._since
      self._since = None

  @contextlib.contextmanager
  def excluded(self, wait_for=None):
    """Leaves a block (evaluation, checkpointing) out of the counted time.

    The clock is paused as `pause(wait_for)` does and, if it was running, restarted when the block ends.

    Args:
      wait_for: arrays (a tree) to wait for before the block, or None.

    Yields:
      None, for the excluded block.
    """
    running = self.running
    self.pause(wait_for)
    try:
      yield
    finally:
      if running:
        self._since = time.perf_counter()

  def counted(self, wait_for=None) -> float:
    """The counted seconds so far, the running interval included.

    Args:
      wait_for: arrays (a tree) to wait for first, or None.

    Returns:
      The seconds.
    """
    if wait_for is not None:
      jax.block_until_ready(wait_for)
    return self.total + (time.perf_counter() - self._since if self._since is not None else 0.0)

  def lap(self, step: int, name: str = "default", wait_for=None) -> float | None:
    """Steps per second of counted time since the previous lap named `name`.

    Args:
      step: the training step now.
      name: the lap's name: each name has its own previous lap (before its first, the clock's first start).
      wait_for: arrays (a tree) to wait for first, or None.

    Returns:
      The steps per second; None before the clock has run, or where the step or the counted time has not advanced.
    """
    if self._start is None:
      return None
    now = self.counted(wait_for)
    previous_step, previous_time = self._marks.get(name, self._start)
    self._marks[name] = (step, now)
    if step <= previous_step or now <= previous_time:
      return None
    return (step - previous_step) / (now - previous_time)

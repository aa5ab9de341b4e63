"""Stopping training cleanly on SIGTERM (preemption) or SIGINT (Ctrl-C): the loop finishes its step, saves, exits.

With one process a signal handler sets a flag that the loop reads after every step. With several processes
(`jax.distributed`), JAX's preemption service receives SIGTERM (it installs its own handler) and
`reached_preemption_sync_point` makes every process stop at the same step, even those that got no signal; SIGINT
is passed on to it as a SIGTERM. A second Ctrl-C stops at once.
"""

import os
import signal
import threading
import time

import jax
from absl import logging
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionWatcher:
  """`with PreemptionWatcher() as watcher: ... if watcher.reached(step): save and leave`."""

  def __init__(self):
    self.signal_name: str | None = None
    self.received_at: float | None = None
    self._flag = threading.Event()
    self._last_step = None
    self._previous = {}
    self._multi_process = jax.process_count() > 1

  def __enter__(self) -> 'PreemptionWatcher':
    if threading.current_thread() is not threading.main_thread():
      return self  # signal handlers can only be installed from the main thread (e.g. not under some notebooks)
    watched = (signal.SIGINT,) if self._multi_process else SIGNALS
    for number in watched:
      self._previous[number] = signal.signal(number, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for number, handler in self._previous.items():
      signal.signal(number, handler)
    self._previous.clear()

  def _handle(self, number, frame) -> None:  # pylint: disable=unused-argument
    if number == signal.SIGINT and self.signal_name is not None:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
    self.signal_name = signal.Signals(number).name
    self.received_at = time.time()
    after = '' if self._last_step is None else f' (after step {self._last_step})'
    print(f'\n{self.signal_name} received{after}: saving a checkpoint after the current step', flush=True)
    if self._multi_process:  # JAX's preemption service listens for SIGTERM only
      os.kill(os.getpid(), signal.SIGTERM)
    else:
      self._flag.set()

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step` (with several processes: the same answer on every process; every
    process must call this after every step)."""
    self._last_step = step
    if self._multi_process:
      reached = multihost_utils.reached_preemption_sync_point(step)
      if reached and self.signal_name is None:
        self.signal_name = 'SIGTERM (to this or another process)'
      return reached
    return self._flag.is_set()

  def describe(self) -> str:
    return self.signal_name or 'a stop request'


def log_stop(watcher: PreemptionWatcher, step: int, checkpoint_directory) -> None:
  elapsed = f' {time.time() - watcher.received_at:.1f} s after the signal' if watcher.received_at else ''
  message = (f'Stopped at step {step} on {watcher.describe()}: checkpoint saved in {checkpoint_directory}'
             f'{elapsed}. Run the same command again to continue.')
  logging.warning(message)
  print(message, flush=True)

"""Batches prepared ahead in a background thread: input and host→device transfer overlap the running step.

The training loop dispatches a step asynchronously, so one batch of overlap comes for free; a queue of a few
global batches also absorbs an input stage whose speed varies (a slow JPEG, a bucket read) and keeps the
transfer of the next batch off the loop's thread while it logs, checkpoints or waits on a result.
"""

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any


class _Failure:
  def __init__(self, error: BaseException):
    self.error = error


class Prefetcher:
  """`transform(batch)` for the batches of `iterator`, computed up to `size` batches ahead.

  `iterator` has `get_state()` / `set_state()` (its position, saved in checkpoints); so has the prefetcher, whose
  position is that after the last batch it handed out, not after the batches waiting in its queue: a checkpoint
  saved between steps resumes at the first batch no step has used. Errors of the iterator or the transform are
  raised by `next`, in the loop's thread.
  """

  def __init__(self, iterator: Iterator, transform: Callable[[Any], Any], size: int = 2):
    if size < 1:
      raise ValueError(f'config.data.prefetch must be at least 1 to prefetch, got {size}')
    self._iterator, self._transform = iterator, transform
    self._queue = queue.Queue(maxsize=size)
    self._state = iterator.get_state()
    self._stop = threading.Event()
    self._thread = None

  def get_state(self):
    return self._state

  def set_state(self, state) -> None:
    if self._thread is not None:
      raise RuntimeError('The input position can only be set before the first batch is read')
    self._iterator.set_state(state)
    self._state = self._iterator.get_state()

  def __iter__(self) -> 'Prefetcher':
    return self

  def __next__(self):
    if self._thread is None:
      self._thread = threading.Thread(target=self._produce, name='prefetch', daemon=True)
      self._thread.start()
    item = self._queue.get()
    if isinstance(item, _Failure):
      self._queue.put(item)  # every later call raises it too
      raise item.error
    batch, self._state = item
    return batch

  def _produce(self) -> None:
    try:
      while not self._stop.is_set():
        batch = self._transform(next(self._iterator))
        self._put((batch, self._iterator.get_state()))
    except BaseException as error:  # pylint: disable=broad-except  # handed to the loop's thread
      self._put(_Failure(error))

  def _put(self, item) -> None:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return
      except queue.Full:
        continue

  def close(self) -> None:
    """Stops the thread (the batches it prepared are dropped)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()

  def __enter__(self) -> 'Prefetcher':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

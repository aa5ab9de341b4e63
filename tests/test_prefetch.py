"""The prefetching thread of the training loop (lbdt_jax/prefetch.py): order, read-ahead, the checkpointed position,
errors."""

import threading

import pytest

from lbdt_jax import prefetch


class Counting:
  """0, 1, 2, ... with the train iterator's position interface; raises at `fail_at`."""

  def __init__(self, fail_at=None):
    self.position, self.fail_at = 0, fail_at

  def __next__(self):
    if self.position == self.fail_at:
      raise OSError(f'damaged batch {self.position}')
    self.position += 1
    return self.position - 1

  def get_state(self):
    return {'batch': self.position}

  def set_state(self, state):
    self.position = state['batch']


def test_batches_come_in_order_transformed_and_the_position_is_that_of_the_batches_handed_out():
  source = Counting()
  with prefetch.Prefetcher(source, lambda x: 10 * x, size=2) as batches:
    assert [next(batches) for _ in range(3)] == [0, 10, 20]
    assert batches.get_state() == {'batch': 3}  # what a checkpoint now records: resume at batch 3
  assert source.position >= 3


def test_the_next_batch_is_prepared_while_the_loop_still_works_on_the_current_one():
  second_started = threading.Event()

  def transform(x):
    if x == 1:
      second_started.set()
    return x

  with prefetch.Prefetcher(Counting(), transform, size=2) as batches:
    assert next(batches) == 0
    # The loop holds batch 0 and has not asked for batch 1: the thread prepares it meanwhile.
    assert second_started.wait(timeout=30)


def test_it_reads_at_most_size_batches_ahead():
  source = Counting()
  with prefetch.Prefetcher(source, lambda x: x, size=2) as batches:
    next(batches)
    # The batch handed out, two in the queue and one read that waits for a free place; then it stops reading.
    waited = threading.Event()
    for _ in range(3000):
      if source.position == 4 or waited.wait(0.01):
        break
    waited.wait(0.3)
    assert source.position == 4


def test_resuming_from_a_saved_position_gives_the_batches_not_yet_used():
  with prefetch.Prefetcher(Counting(), lambda x: x) as batches:
    used = [next(batches) for _ in range(4)]
    saved = batches.get_state()
  resumed = prefetch.Prefetcher(Counting(), lambda x: x)
  resumed.set_state(saved)
  with resumed:
    assert used + [next(resumed) for _ in range(3)] == list(range(7))
    with pytest.raises(RuntimeError, match='before the first batch'):
      resumed.set_state({'batch': 0})


def test_an_error_of_the_input_is_raised_in_the_loop_after_the_good_batches():
  with prefetch.Prefetcher(Counting(fail_at=2), lambda x: x) as batches:
    assert [next(batches), next(batches)] == [0, 1]
    with pytest.raises(OSError, match='damaged batch 2'):
      next(batches)
    with pytest.raises(OSError, match='damaged batch 2'):
      next(batches)


def test_a_bad_size_is_named():
  with pytest.raises(ValueError, match='config.data.prefetch'):
    prefetch.Prefetcher(Counting(), lambda x: x, size=0)

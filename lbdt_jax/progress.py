"""Progress with an ETA that reads well in a terminal and in a pod's log."""

import io
import sys

import jax
import tqdm


class Progress(tqdm.tqdm):
  """tqdm's bar in a terminal; without one (a log file, a pod), tqdm's same line printed by `log()`, one per call,
  instead of carriage-return updates that a log shows as one endless line. Process 0 only."""

  def __init__(self, *args, **kwargs):
    self.interactive = sys.stdout.isatty()
    super().__init__(*args, file=sys.stdout if self.interactive else io.StringIO(), dynamic_ncols=True,
                     disable=jax.process_index() > 0, **kwargs)

  def log(self) -> None:
    """A line for logs (nothing in a terminal, where the bar is on screen already)."""
    if not self.interactive and not self.disable:
      print(str(self), flush=True)

"""What every benchmark shares: the machine's description, inputs, a sound timer, memory figures, tables, JSON.

Timing method: compile first (timed apart), one warm-up call, then `repeats` measurements; each measurement runs
`calls` back-to-back calls and waits for the last result (`jax.block_until_ready` / `torch.cuda.synchronize`), so
asynchronous dispatch cannot hide work. Calls cycle through several distinct input batches, at least
`CACHE_BUSTING_BYTES` of them in all, so that inputs are never served from a cache. Reported: the median per call
and the spread (min, max, interquartile range) over the repeats.
"""

import dataclasses
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import host_memory

try:
  import resource  # Unix only: page faults and kernel time per call
except ImportError:
  resource = None

# Distinct input batches in rotation amount to at least this much (larger than any CPU/GPU last-level cache).
CACHE_BUSTING_BYTES = 256 * 2**20
MAX_INPUT_SETS = 8
NUM_WORDS = 25  # the reference's sentence length


def machine() -> dict:
  """Backend, device and host, for the tables' captions and the JSON."""
  device = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), cpu)
  except OSError:
    pass
  return {'backend': jax.default_backend(), 'device': device.device_kind, 'device_count': jax.device_count(),
          'cpu': cpu, 'cpu_cores': os.cpu_count(), 'jax': jax.__version__,
          'huge_pages': host_memory.huge_pages_requested()}


def describe(info: dict) -> str:
  if info['backend'] == 'cpu':
    pages = ', huge pages' if info.get('huge_pages') else ''
    return f'CPU: {info["cpu"]}, {info["cpu_cores"]} cores (jax {info["jax"]}{pages})'
  return f'{info["backend"].upper()}: {info["device"]} ({info["cpu_cores"]} host cores, jax {info["jax"]})'


def model_inputs(batch: int, size: int, word_dim: int = 300, seed: int = 0) -> dict[str, np.ndarray]:
  """A batch as the model takes it: normalised frame and frame difference (NHWC), word vectors, word mask."""
  rng = np.random.default_rng(seed)
  frame = np.clip(rng.standard_normal((batch, size, size, 3)), -2.2, 2.7).astype(np.float32)
  difference = 0.5 * np.abs(np.clip(rng.standard_normal((batch, size, size, 3)), -2.2, 2.7)).astype(np.float32)
  lengths = rng.integers(3, NUM_WORDS + 1, batch)
  word_mask = (np.arange(NUM_WORDS)[None] < lengths[:, None]).astype(np.int32)
  words = rng.standard_normal((batch, NUM_WORDS, word_dim)).astype(np.float32) * word_mask[..., None].astype(np.float32)
  return {'frame': frame, 'frame_difference': difference, 'words': words, 'word_mask': word_mask}


def ground_truth(batch: int, size: int, seed: int = 0) -> np.ndarray:
  """Binary target masks [B, H, W] (an ellipse per sample) for the training step."""
  rng = np.random.default_rng(seed + 1)
  y, x = np.mgrid[:size, :size] / size
  centres, radii = rng.uniform(0.3, 0.7, (batch, 2)), rng.uniform(0.1, 0.3, (batch, 2))
  inside = ((x[None] - centres[:, 0, None, None]) / radii[:, 0, None, None])**2 + (
      (y[None] - centres[:, 1, None, None]) / radii[:, 1, None, None])**2
  return (inside <= 1).astype(np.uint8)


def number_of_input_sets(bytes_per_set: int) -> int:
  return int(min(MAX_INPUT_SETS, max(2, math.ceil(CACHE_BUSTING_BYTES / max(1, bytes_per_set)))))


def input_sets(make: Callable[[int], dict]) -> list[dict]:
  """Distinct batches `make(seed)`, as many as `number_of_input_sets` asks for."""
  first = make(0)
  count = number_of_input_sets(sum(x.nbytes for x in first.values()))
  return [first] + [make(seed) for seed in range(1, count)]


def model_arguments(inputs: dict) -> tuple:
  """The positional inputs of `LBDT.apply` from a `model_inputs` dict."""
  return tuple(inputs[key] for key in ('frame', 'frame_difference', 'words', 'word_mask'))


@dataclasses.dataclass
class Timing:
  median: float  # seconds per call
  minimum: float
  maximum: float
  iqr: float
  repeats: int
  calls: int
  # Per call, from the process's resource usage over the timed calls (None where the OS does not report it):
  # page faults, and CPU seconds spent in the kernel (zeroing freshly mapped pages, mostly).
  page_faults: float | None = None
  system_seconds: float | None = None

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def time_calls(call: Callable[[int], object], *, repeats: int, calls: int = 1,
               wait: Callable[[object], None] = jax.block_until_ready) -> Timing:
  """`call(i)` runs the i-th call (the caller picks input set i mod k) and returns something `wait` can wait on."""
  wait(call(0))  # warm-up
  times = []
  counter = 1
  usage_before = _process_usage()
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      result = call(counter)
      counter += 1
    wait(result)
    times.append((time.perf_counter() - start) / calls)
  usage_after = _process_usage()
  per_call = [(after - before) / (repeats * calls) for before, after in zip(usage_before, usage_after)] or [None] * 2
  quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
  return Timing(statistics.median(times), min(times), max(times), quartiles[2] - quartiles[0], repeats, calls,
                *per_call)


def _process_usage() -> tuple[float, ...]:
  """(page faults, kernel CPU seconds) of this process so far; empty where the OS has no getrusage."""
  if resource is None:
    return ()
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_minflt + usage.ru_majflt, usage.ru_stime


def timed_compile(jitted, *args):
  """(compiled executable, seconds) of a jitted function for these arguments."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


MATMUL_PEAK_SIZES = (1024, 2048, 4096)


def matmul_peak_flops(dtype: str, sizes: Sequence[int] = MATMUL_PEAK_SIZES, repeats: int = 10) -> float:
  """The FLOP/s of the fastest square matmul call on the default device: the compute ceiling this machine reaches
  through XLA, for utilisation figures where no vendor peak is listed (CPUs). The fastest call, not the median:
  on a shared machine interference only slows calls down (medians varied 0.32-0.46 TFLOP/s between runs on
  the 2-core test machine, the fastest calls 0.38-0.47)."""
  best = 0.0
  for size in sizes:
    matrix = jax.device_put(jnp.ones((size, size), dtype))
    compiled, _ = timed_compile(jax.jit(jnp.matmul), matrix, matrix)
    timing = time_calls(lambda _: compiled(matrix, matrix), repeats=repeats)
    best = max(best, 2 * size**3 / timing.minimum)
  return best


def time_inference(model, variables, sets: list, *, repeats: int, calls: int = 1):
  """(Timing, compile seconds, compiled) of the jitted eval-mode forward pass over the rotating input sets."""
  sets = [jax.device_put(inputs) for inputs in sets]
  apply = jax.jit(lambda v, x: model.apply(v, *model_arguments(x)))
  compiled, compile_seconds = timed_compile(apply, variables, sets[0])
  timing = time_calls(lambda i: compiled(variables, sets[i % len(sets)]), repeats=repeats, calls=calls)
  return timing, compile_seconds, compiled


def time_train_steps(step_fn, state, batches: list, *, repeats: int, calls: int = 1):
  """(Timing, compile seconds, compiled, losses of every call) of a jitted train step that donates its state."""
  compiled, compile_seconds = timed_compile(step_fn, state, batches[0])
  holder, losses = {'state': state}, []

  def call(i):
    holder['state'], metrics = compiled(holder['state'], batches[i % len(batches)])
    losses.append(metrics['loss'])
    return metrics['loss']

  timing = time_calls(call, repeats=repeats, calls=calls)
  return timing, compile_seconds, compiled, losses


def compiled_memory_bytes(compiled) -> int | None:
  """Device memory one call of a compiled program needs: arguments + outputs + temporaries, less what donated
  buffers alias (XLA's own accounting; available on every backend)."""
  try:
    analysis = compiled.memory_analysis()
  except (AttributeError, NotImplementedError, RuntimeError):
    return None
  if analysis is None:
    return None
  return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
             - analysis.alias_size_in_bytes)


def peak_device_memory_bytes() -> int | None:
  """The allocator's peak on GPUs/TPUs (None where the backend does not report it, e.g. CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def write_json(path: str | None, result: dict) -> None:
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
      json.dump(result, f, indent=2)
    print(f'Wrote {path}')

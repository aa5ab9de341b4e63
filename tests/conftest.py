"""Shared helpers: the tiny config and model, the reference fixtures, prepared synthetic data, XLA settings.

Most of the suite's time is XLA compiling small programs, so the tests and the subprocesses they start compile
without LLVM's expensive passes (`jax_disable_most_optimizations`): the same HLO and arithmetic, several times
faster to compile, slower to run. Tests marked `optimized` (the float64 full model, where running dominates) compile
with them.
"""

import contextlib
import functools
import os
import pathlib
import tempfile

# Compiled programs are cached on disk and shared by the test processes and the subprocesses they start
# (set before JAX initialises).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(tempfile.gettempdir(), 'lbdt_jax_test_cache'))
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = ROOT / 'tests' / 'fixtures' / 'reference'
# The tiny model less its second stream and an LBDT stage, for the tests of training, checkpoints, devices and
# processes: the machinery is under test there, not the model (tests/test_model.py), and it compiles twice as fast.
TRAINER_MODEL = {'temporal_encoder': False, 'lbdt_stages': (5,)}
TRAINER_MODEL_FLAGS = ('--config.model.temporal_encoder=False', '--config.model.lbdt_stages=(5,)')


def pytest_collection_modifyitems(items):
  """Tests marked `heavy(seconds)` go first, longest first: pytest-xdist hands out tests (and xdist groups, placed
  where their first test is) in collection order, and a long one at the end would leave the other worker idle."""
  def estimate(item):
    marker = item.get_closest_marker('heavy')
    return 0 if marker is None else (marker.args[0] if marker.args else 1)
  items.sort(key=estimate, reverse=True)


@contextlib.contextmanager
def optimized_xla():
  """Programs compiled inside compile with LLVM's expensive passes."""
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', False)
  try:
    yield
  finally:
    jax.config.update('jax_disable_most_optimizations', previous)


@pytest.fixture(autouse=True, scope='session')
def _abstract_variables_once_per_config():
  """`model_dir.abstract_variables` traces the model's init (seconds for the full model) and depends on the config
  alone: the test processes compute it once per config (each caller gets its own copy of the tree)."""
  from lbdt_jax import model_dir  # pylint: disable=import-outside-toplevel
  original = model_dir.abstract_variables
  cached = functools.lru_cache(maxsize=None)(lambda config, x64: original(config))
  model_dir.abstract_variables = lambda config: jax.tree.map(
      lambda leaf: leaf, cached(config, jax.config.read('jax_enable_x64')))
  yield
  model_dir.abstract_variables = original


@pytest.fixture(autouse=True)
def _optimized_xla_when_marked(request):
  if request.node.get_closest_marker('optimized') is None:
    yield
  else:
    with optimized_xla():
      yield


def tiny_model_config(**overrides):
  from configs import tiny
  from lbdt_jax.models import LBDTConfig
  return LBDTConfig.from_dict({**tiny.get_config().model.to_dict(), **overrides})


def random_inputs(config, batch=2, height=64, width=64, words=6, seed=0, lengths=None):
  rng = np.random.default_rng(seed)
  frame = rng.standard_normal((batch, height, width, 3)).astype(np.float32)
  difference = np.abs(rng.standard_normal((batch, height, width, 3))).astype(np.float32)
  lengths = lengths or [words] + [max(1, words // 2)] * (batch - 1)
  mask = (np.arange(words)[None] < np.array(lengths)[:, None]).astype(np.int32)
  text = rng.standard_normal((batch, words, config.word_dim)).astype(np.float32) * mask[..., None]
  return frame, difference, text, mask


def init_model(config, inputs, seed=0):
  """The model and its initialised variables (a jitted init: an eager one runs op by op, far slower)."""
  from lbdt_jax.models import LBDT  # pylint: disable=import-outside-toplevel
  model = LBDT(config)
  return model, jax.jit(model.init)(jax.random.key(seed), *inputs)


def random_like(abstract, seed=0, like=None):
  """Random values of the shapes and dtypes of `abstract` (a tree of flax variables), without compiling an init
  program: kernels ~ N(0, 1/fan-in), biases and statistics near zero, scales and variances near one. With `like`,
  every leaf that `like` has at the same path and shape is taken from it."""
  rng = np.random.default_rng(seed)

  def value(path, leaf):
    shared = like
    for key in path:
      shared = shared.get(key.key) if isinstance(shared, dict) else None
    if shared is not None and shared.shape == leaf.shape:
      return shared
    name, noise = path[-1].key, rng.standard_normal(leaf.shape)
    if name in ('scale', 'var'):
      return (1 + 0.1 * np.abs(noise)).astype(leaf.dtype)
    if name == 'mean' or name.endswith('bias'):
      return (0.1 * noise).astype(leaf.dtype)
    return (noise / np.sqrt(max(1, np.prod(leaf.shape[:-1])))).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(value, abstract)


def random_variables(config, seed=0, like=None):
  """`random_like` for the variables of an LBDT of `config`."""
  from lbdt_jax import model_dir  # pylint: disable=import-outside-toplevel
  return random_like(model_dir.abstract_variables(config), seed, like)


@pytest.fixture
def tiny_config():
  return tiny_model_config()


@pytest.fixture(scope='session')
def tiny_variables():
  """Random variables of the tiny model (configs/tiny.py)."""
  return random_variables(tiny_model_config())


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """The tiny synthetic set, prepared once for every test of this process (and for the subprocesses they start)."""
  from configs import tiny  # pylint: disable=import-outside-toplevel
  from data_pipeline import prepare  # pylint: disable=import-outside-toplevel
  path = tmp_path_factory.mktemp('data')
  config = tiny.get_config()
  config.data.data_dir = str(path)
  prepare.prepare(config)
  return str(path)


def run_main(*args: str) -> int:
  """main.py's command line in this process (tests/main_commands.py): its exit status."""
  import main_commands  # pylint: disable=import-outside-toplevel
  from absl import logging  # pylint: disable=import-outside-toplevel
  verbosity = logging.get_verbosity()
  try:
    return main_commands.run(list(args), capture=False)['status']
  finally:
    logging.set_verbosity(verbosity)

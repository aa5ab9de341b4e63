"""Shared helpers: the tiny config and the reference fixtures (copied from shared/reference)."""

import os
import pathlib
import tempfile

# Compiled programs are cached on disk and shared by the test processes and the subprocesses they start
# (set before JAX initialises).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(tempfile.gettempdir(), 'lbdt_jax_test_cache'))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = ROOT / 'tests' / 'fixtures' / 'reference'


def pytest_collection_modifyitems(items):
  """Tests marked `heavy` go first: pytest-xdist hands tests out in collection order, so long ones at the end
  would leave one worker running alone."""
  items.sort(key=lambda item: item.get_closest_marker('heavy') is None)


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


@pytest.fixture
def tiny_config():
  return tiny_model_config()


def init_model(config, inputs, seed=0):
  from lbdt_jax.models import LBDT
  model = LBDT(config)
  return model, model.init(jax.random.key(seed), *inputs)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """The tiny synthetic set, prepared once for every test of this process (and for the subprocesses they start)."""
  from configs import tiny  # pylint: disable=import-outside-toplevel
  from data_pipeline import prepare  # pylint: disable=import-outside-toplevel
  path = tmp_path_factory.mktemp('tfds')
  config = tiny.get_config()
  config.data.data_dir = str(path)
  prepare.prepare(config)
  return str(path)

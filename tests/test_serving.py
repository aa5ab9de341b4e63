"""The serving artefact (`--mode=export` → lbdt_jax.serving): the exported function computes what the model does,
at any batch size and vocabulary size; predict runs it with the same masks; loading and running it needs neither
flax, TensorFlow nor the model code; it is lowered for CPU, CUDA and TPU."""

import functools
import json
import os
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest

from configs import tiny
from conftest import ROOT
from data_pipeline import glove
from lbdt_jax import export, inference, model_dir, predict, serving, train
from lbdt_jax.models import LBDT


SENTENCES = ['the red square moving left', 'a ball']


@pytest.fixture(scope='module')
def exported(tmp_path_factory, tiny_variables):
  """A model directory written by `--mode=export` from a model directory of the tiny model (random variables)."""
  root = tmp_path_factory.mktemp('serving')
  config = tiny.get_config()
  model_config = train.model_config(config)
  table = glove.learned(glove.vocabulary(SENTENCES), dim=model_config.word_dim)
  model_dir.write(root / 'source', model_config, tiny_variables, table=table, config=config,
                  manifest=model_dir.manifest_for(config, model_config, table, 0))
  config.init.checkpoint = str(root / 'source')
  return export.export_model(config, root / 'work', root / 'export')


@pytest.fixture(scope='module')
def served(exported):
  return serving.load(exported)


def example_inputs(served, batch, seed=0):
  rng = np.random.default_rng(seed)
  frames = rng.standard_normal((batch, *served.input_size, 3)).astype(np.float32)
  differences = np.abs(rng.standard_normal(frames.shape)).astype(np.float32)
  word_ids, word_mask = served.encode([SENTENCES[k % 2] for k in range(batch)])
  return frames, differences, word_ids, word_mask


def test_the_exported_function_computes_the_model_probabilities(exported, served):
  loaded = model_dir.read(exported)
  frames, differences, word_ids, word_mask = example_inputs(served, batch=2)
  params = {'model': loaded.variables['params'], 'word_vectors': loaded.table.vectors}
  batch = dict(zip(inference.MODEL_INPUTS, (frames, differences, word_ids, word_mask)))
  expected = jax.jit(functools.partial(inference.probabilities, LBDT(loaded.model_config)))(
      params, loaded.variables['batch_stats'], batch)
  got = served.probabilities(frames, differences, word_ids, word_mask)
  assert got.shape == (2, *served.input_size) and got.dtype == np.float32
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=0, atol=1e-6)
  # The parameters are arguments of the program (read from variables.npz), not constants baked into it.
  assert len(served.variables) == len(inference.flat_variables(loaded.variables))
  assert len(served.exported.in_avals) == len(served.variables) + 5


def test_any_batch_size_and_vocabulary_size(served):
  frames, differences, word_ids, word_mask = example_inputs(served, batch=3, seed=1)
  three = np.asarray(served.probabilities(frames, differences, word_ids, word_mask))
  assert three.shape == (3, *served.input_size)
  for row in range(3):  # batch 1, row by row: the same numbers
    one = served.probabilities(frames[row:row + 1], differences[row:row + 1], word_ids[row:row + 1],
                               word_mask[row:row + 1])
    np.testing.assert_allclose(np.asarray(one)[0], three[row], rtol=0, atol=1e-5)
  # A larger word table (e.g. extended from GloVe) whose extra rows the sentences do not use: the same result.
  extended = np.concatenate([served.word_vectors, np.ones((4, served.word_vectors.shape[1]), np.float32)])
  np.testing.assert_allclose(np.asarray(served.probabilities(frames, differences, word_ids, word_mask, extended)),
                             three, rtol=0, atol=1e-6)
  with pytest.raises(ValueError, match='input size'):
    served.probabilities(frames[:, :32], differences[:, :32], word_ids, word_mask)


def test_encode_follows_the_word_table_and_the_tokenizer(exported, served):
  table = glove.WordTable.load(exported / model_dir.WORD_TABLE_FILE)
  word_ids, word_mask = served.encode('The red square, moving LEFT.')
  tokens = ['the', 'red', 'square', ', ', 'moving', 'left']  # max_words 6: ", " is a token, the final "." is not
  assert word_mask.tolist() == [1] * 6 and word_ids.tolist() == table.ids(tokens).tolist()
  word_ids, word_mask = served.encode(['a zebra'])
  assert word_ids.shape == (1, served.max_words) and word_mask[0].tolist() == [1, 1, 0, 0, 0, 0]
  assert word_ids[0, 1] == glove.UNKNOWN_ID and word_ids[0, 2] == glove.PAD_ID


def test_the_artefact_is_lowered_for_cpu_cuda_and_tpu_with_its_constants(exported, served):
  assert served.platforms == ('cpu', 'cuda', 'tpu')
  constants = json.loads((exported / serving.SERVING_DIR / serving.CONSTANTS_FILE).read_text())
  assert constants['platforms'] == ['cpu', 'cuda', 'tpu']
  assert constants['input_size'] == [64, 64] and constants['max_words'] == 6 and constants['delta'] == 6
  assert np.allclose(constants['imagenet_mean'], [0.485, 0.456, 0.406])
  assert 'cudnn' not in served.exported.mlir_module().lower()  # XLA's attention: no cuDNN kernel to export
  batch = served.exported.in_avals[-1].shape[0]
  assert not isinstance(batch, int) and str(batch) == 'b'  # symbolic batch size


def write_frames(folder, count=5, height=45, width=61):
  folder.mkdir()
  for n in range(count):
    frame = np.full((height, width, 3), 40, np.uint8)
    cv2.rectangle(frame, (5 + 4 * n, 10), (20 + 4 * n, 25), (220, 30, 30), -1)
    cv2.imwrite(str(folder / f'{n:03d}.png'), frame)
  return folder


def test_predict_through_the_artefact_gives_the_model_masks(exported, served, tmp_path):
  frames = write_frames(tmp_path / 'frames')
  summaries = {name: predict.predict(exported, frames, SENTENCES, tmp_path / name, batch_size=4, serving=use)
               for name, use in (('model', False), ('serving', True))}
  model, artefact = summaries['model'], summaries['serving']
  for ours, theirs in zip(model['sentences'], artefact['sentences']):
    assert [r['area'] for r in ours['frames']] == [r['area'] for r in theirs['frames']]
    np.testing.assert_allclose([r['mean_foreground_probability'] for r in ours['frames']],
                               [r['mean_foreground_probability'] for r in theirs['frames']], atol=1e-6)
    for record in ours['frames']:
      name = f'{record["frame"]:05d}.png'
      assert np.array_equal(cv2.imread(f'{ours["masks"]}/{name}', cv2.IMREAD_UNCHANGED),
                            cv2.imread(f'{theirs["masks"]}/{name}', cv2.IMREAD_UNCHANGED))
  # The artefact's normalisation is predict's.
  rgb = cv2.cvtColor(cv2.imread(str(frames / '000.png')), cv2.COLOR_BGR2RGB)[None]
  np.testing.assert_allclose(served.normalise(rgb), predict.normalised_frames(rgb, *served.input_size), atol=1e-6)
  with pytest.raises(ValueError, match='attention maps need the model code'):
    predict.predict(exported, frames, SENTENCES, tmp_path / 'attention', serving=True, attention=True)


def test_predict_serving_needs_an_artefact(tmp_path, tiny_variables):
  config = tiny.get_config()
  model_config = train.model_config(config)
  table = glove.learned(['a', 'ball'], dim=model_config.word_dim)
  model_dir.write(tmp_path / 'plain', model_config, tiny_variables, table=table)
  with pytest.raises(FileNotFoundError, match='has no serving artefact'):
    predict.predict(tmp_path / 'plain', write_frames(tmp_path / 'frames'), ['a ball'], tmp_path / 'out',
                    serving=True)


RUN_WITHOUT_MODEL_CODE = '''
import json, sys
import numpy as np
from lbdt_jax import serving
model = serving.load(sys.argv[1])
frames = model.normalise(np.random.default_rng(0).integers(0, 256, (2, 30, 40, 3), dtype=np.uint8))
word_ids, word_mask = model.encode(['a ball'] * 2)
np.save(sys.argv[2], np.asarray(model.probabilities(frames, model.frame_differences(frames), word_ids, word_mask)))
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('lbdt_jax', 'data_pipeline', 'flax',
                                                                         'tensorflow', 'orbax', 'optax', 'chex'))))
'''


def test_loading_and_running_the_artefact_needs_no_flax_tensorflow_or_model_code(exported, served, tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run([sys.executable, '-c', RUN_WITHOUT_MODEL_CODE, str(exported), str(tmp_path / 'p.npy')],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  loaded = json.loads(result.stdout.strip().splitlines()[-1])
  assert loaded == ['data_pipeline', 'data_pipeline.tokenizer', 'lbdt_jax', 'lbdt_jax.serving']
  probabilities = np.load(tmp_path / 'p.npy')
  assert probabilities.shape == (2, *served.input_size) and np.all((probabilities >= 0) & (probabilities <= 1))

"""The serving artefact of a model directory: run a trained LBDT with nothing but jax and numpy.

`--mode=export` writes, beside the orbax parameters of the model directory (docs/serving.md):

  <dir>/serving/probabilities.jax   the inference function serialised with `jax.export` (StableHLO), lowered for
                                    CPU, CUDA and TPU, with a symbolic batch size
  <dir>/serving/variables.npz       its parameters and BatchNorm statistics, flattened ('params/.../kernel')
  <dir>/serving/serving.json        what feeding it takes: input size, ImageNet mean and std, δ, max_words, the
                                    tokenizer rule, the word ids of the pad token and of unknown words
  <dir>/word_table.npz              the words and their vectors (the model directory's own table)

    from lbdt_jax import serving
    model = serving.load('models/lbdt4')              # a model directory written by --mode=export
    frames = model.normalise(video)                   # uint8 RGB [F, h, w, 3] → float32 [F, H, W, 3]
    word_ids, word_mask = model.encode('the dog jumping on the left')   # [max_words] int32 each
    probabilities = model.probabilities(frames, model.frame_differences(frames), np.tile(word_ids, (len(frames), 1)),
                                        np.tile(word_mask, (len(frames), 1)))   # [F, H, W] float32

Imports jax, numpy and the standard library only (and `data_pipeline.tokenizer`, itself numpy-only): no flax, no
TensorFlow, no orbax, no model code. Reads local files (copy a bucket's model directory first).
"""

import dataclasses
import functools
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline import tokenizer

SERVING_DIR = 'serving'
FUNCTION_FILE = 'probabilities.jax'
VARIABLES_FILE = 'variables.npz'
CONSTANTS_FILE = 'serving.json'
FORMAT = 1
# How sentences become tokens: data_pipeline/tokenizer.py, the official LBDT code's rule (stored in serving.json).
TOKENIZER_RULE = {
    'name': 'lbdt-reference',
    'split': tokenizer._SPLIT.pattern,  # pylint: disable=protected-access
    'rule': 'strip; split on runs of non-word characters keeping them as tokens; drop empty pieces and separators '
            'that are exactly one space; lower-case; drop a final "."; keep the first max_words tokens, pad with "" '
            '(mask 0)',
}


@dataclasses.dataclass(eq=False)
class ServingModel:
  """A loaded serving artefact. `probabilities` runs it; `encode`, `normalise` and `frame_differences` prepare its
  inputs with the constants stored beside it."""
  exported: jax.export.Exported
  variables: dict  # {'params/.../kernel': array}, on the default device
  words: tuple[str, ...]
  word_vectors: np.ndarray  # [V, word_dim] float32
  constants: dict  # serving.json
  path: pathlib.Path

  def __post_init__(self):
    self._index = {word: i for i, word in enumerate(self.words)}
    self._vectors = jax.device_put(self.word_vectors)
    self._call = jax.jit(self.exported.call)

  @property
  def platforms(self) -> tuple[str, ...]:
    return tuple(self.exported.platforms)

  @property
  def input_size(self) -> tuple[int, int]:
    return tuple(self.constants['input_size'])

  @property
  def delta(self) -> int:
    return self.constants['delta']

  @property
  def max_words(self) -> int:
    return self.constants['max_words']

  @property
  def mean(self) -> np.ndarray:
    return np.array(self.constants['imagenet_mean'], np.float32)

  @property
  def std(self) -> np.ndarray:
    return np.array(self.constants['imagenet_std'], np.float32)

  def probabilities(self, frames, frame_differences, word_ids, word_mask, word_vectors=None) -> jax.Array:
    """Foreground probabilities [B, H, W] float32 at the input size, for any batch size B.

    frames, frame_differences: [B, H, W, 3] float32, normalised (`normalise`, `frame_differences`); word_ids,
    word_mask: [B, max_words] int32 (`encode`); word_vectors: [V, word_dim] float32, default the stored table (a
    table with more words, e.g. extended from GloVe, works too). One compilation per batch size.
    """
    height, width = self.input_size
    frames, frame_differences = jnp.asarray(frames, jnp.float32), jnp.asarray(frame_differences, jnp.float32)
    word_ids, word_mask = jnp.asarray(word_ids, jnp.int32), jnp.asarray(word_mask, jnp.int32)
    for name, value in (('frames', frames), ('frame_differences', frame_differences)):
      if value.ndim != 4 or value.shape[1:] != (height, width, 3):
        raise ValueError(f'{name} must be [batch, {height}, {width}, 3] (the model\'s input size), got {value.shape}')
    for name, value in (('word_ids', word_ids), ('word_mask', word_mask)):
      if value.shape != (frames.shape[0], self.max_words):
        raise ValueError(f'{name} must be [{frames.shape[0]}, {self.max_words}] (batch, max_words), got {value.shape}')
    vectors = self._vectors if word_vectors is None else jnp.asarray(word_vectors, jnp.float32)
    return self._call(self.variables, vectors, frames, frame_differences, word_ids, word_mask)

  def encode(self, sentences: str | list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(word_ids, word_mask) int32, [max_words] for one sentence, [S, max_words] for a list: the sentence's tokens
    (the tokenizer rule of serving.json) looked up in the stored word table; words it lacks get the unknown id (the
    zero vector in GloVe tables), words beyond max_words are dropped."""
    if isinstance(sentences, str):
      ids, mask = self.encode([sentences])
      return ids[0], mask[0]
    if not sentences:
      raise ValueError('Give at least one sentence')
    unknown = self.constants['unknown_id']
    ids, masks = [], []
    for sentence in sentences:
      if not sentence.strip():
        raise ValueError('A sentence is empty: describe the object to segment, e.g. "the dog jumping on the left"')
      tokens, mask = tokenizer.pad_tokens(sentence, self.max_words)
      ids.append(np.array([self._index.get(token, unknown) for token in tokens], np.int32))
      masks.append(mask.astype(np.int32))
    return np.stack(ids), np.stack(masks)

  def normalise(self, frames) -> np.ndarray:
    """uint8 RGB frames [F, h, w, 3] → the model's input [F, H, W, 3] float32: antialiased bilinear resize to the
    input size, then (frame / 255 - mean) / std (as `lbdt_jax.predict.normalised_frames`)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
      raise ValueError(f'frames must be RGB [frames, height, width, 3], got {frames.shape}')
    return np.asarray(_normalised(frames, *self.input_size, self.mean, self.std))

  def frame_differences(self, frames, delta: int | None = None) -> np.ndarray:
    """|frame t - frame t-δ| of consecutive normalised frames [F, H, W, 3] (the first frame stands in before the
    start), δ = the stored delta unless given."""
    delta = self.delta if delta is None else delta
    if delta < 1:
      raise ValueError(f'delta must be positive, got {delta}')
    frames = np.asarray(frames, np.float32)
    previous = frames[np.maximum(np.arange(len(frames)) - delta, 0)]
    return np.abs(frames - previous)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _normalised(frames, height: int, width: int, mean, std):
  resized = jax.image.resize(frames.astype(jnp.float32), (frames.shape[0], height, width, 3), 'linear',
                             antialias=True)
  return (resized / 255.0 - mean) / std


def directory_of(path) -> pathlib.Path:
  """The model directory of `path`: a model directory, or its serving/ folder."""
  path = pathlib.Path(path)
  if (path / CONSTANTS_FILE).exists() and path.name == SERVING_DIR:
    return path.parent
  return path


def has_artefact(directory) -> bool:
  """Whether a (local) model directory holds a serving artefact."""
  return (directory_of(directory) / SERVING_DIR / CONSTANTS_FILE).exists()


def load(directory) -> ServingModel:
  """The serving artefact of a local model directory (or of its serving/ folder)."""
  directory = directory_of(directory)
  serving = directory / SERVING_DIR
  if not (serving / CONSTANTS_FILE).exists():
    if not directory.exists():
      raise FileNotFoundError(f'Model directory {directory} does not exist')
    raise FileNotFoundError(f'{directory} has no serving artefact ({SERVING_DIR}/{CONSTANTS_FILE}): '
                            '--mode=export writes one')
  constants = json.loads((serving / CONSTANTS_FILE).read_text())
  if constants.get('format') != FORMAT:
    raise ValueError(f'{serving / CONSTANTS_FILE} has format {constants.get("format")}; this lbdt_jax reads format '
                     f'{FORMAT}: export the model again')
  if constants['tokenizer']['split'] != TOKENIZER_RULE['split']:
    raise ValueError(f'{serving / CONSTANTS_FILE} was written with another tokenizer rule '
                     f'({constants["tokenizer"]}) than data_pipeline.tokenizer\'s')
  exported = jax.export.deserialize(bytearray((serving / _check_name(constants['function'])).read_bytes()))
  with np.load(serving / _check_name(constants['variables']), allow_pickle=False) as arrays:
    variables = jax.device_put({key: arrays[key] for key in arrays.files})
  table_file = directory / _check_name(constants['word_table'])
  if not table_file.exists():
    raise FileNotFoundError(f'{directory} has no {constants["word_table"]}: the serving artefact needs the model '
                            'directory\'s word table')
  with np.load(table_file, allow_pickle=False) as arrays:
    words, vectors = tuple(str(w) for w in arrays['words']), arrays['vectors'].astype(np.float32)
  return ServingModel(exported, variables, words, vectors, constants, directory)


def describe(model: ServingModel) -> str:
  """One line: what the artefact is and how it is fed."""
  height, width = model.input_size
  return (f'{model.constants.get("variant", "LBDT")} at {height}x{width}, δ={model.delta}, max_words='
          f'{model.max_words}, {len(model.words)} words, platforms {", ".join(model.platforms)}')


def _check_name(name: str) -> str:  # a file name stored in serving.json stays inside the model directory
  if not re.fullmatch(r'[\w.-]+', name) or name in ('.', '..'):
    raise ValueError(f'serving.json names the file {name!r}: expected a plain file name')
  return name

"""Run a model on your own video: `predict(model_dir, video, sentences, output_dir)` (`--mode=predict`).

Frames are streamed from a video file (anything OpenCV reads) or a folder of images; each frame is paired with
the frame δ earlier (clamped at the start) and resized to the model's input size as in training, and every
(frame, sentence) pair of a batch goes through one jitted call. Probabilities are brought back to the frame's own
size. Everything (model, sentences, options, every frame, the output folder) is checked before anything is
written. The model code runs the model directory's orbax parameters; with `serving=True` (`--serving`) the
directory's serving artefact (`lbdt_jax.serving`, written by `--mode=export`) runs instead: the same masks, without
attention maps. Written to the output folder (local or a bucket):

  masks/<k>_<sentence>/<frame>.png   binary masks (0/255) per sentence and frame
  overlay.mp4, overlay.gif           every sentence's mask in its own colour, sentences as captions (H.264 mp4)
  predictions.json                   per sentence and frame: mask area (pixels) and mean foreground probability;
                                     the frames that could not be read
  attention/frame<f>_stage<s>_layer<l>.png   with `attention=True`: per word, its attention over the frame and
                                     over the frame difference (paper Fig. 6)

Memory stays bounded: only the last δ frames are kept; the GIF keeps at most `MAX_GIF_FRAMES` frames (evenly
subsampled) at reduced size.
"""

import collections
import contextlib
import functools
import logging
import re
from collections.abc import Iterator

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from etils import epath

from data_pipeline import glove, normalisation, tokenizer
from lbdt_jax import inference, model_dir, paths, visualize
from lbdt_jax import serving as serving_artefact
from lbdt_jax.models import LBDT

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
MAX_GIF_FRAMES = 120
GIF_WIDTH = 320
NAMED_UNREADABLE = 5  # an error lists this many unreadable frames or files at most


def load_model(directory) -> model_dir.ModelDirectory:
  """A model directory written by `--mode=export`, by training (workdir/export) or by `--mode=convert` (with a
  word table)."""
  return model_dir.read(directory)


def load_serving(directory) -> tuple[model_dir.ModelDirectory, serving_artefact.ServingModel]:
  """A local model directory's serving artefact, with its word table, model config and the artefact's input
  constants as a `ModelDirectory` without parameters (the orbax parameters are not read)."""
  directory = paths.path(directory)
  if paths.is_remote(directory):
    raise ValueError(f'The serving artefact is read from a local model directory: copy {directory} first, or run '
                     'the model code (without --serving)')
  served = serving_artefact.load(directory)
  table = glove.WordTable.load(directory / model_dir.WORD_TABLE_FILE)
  manifest = {**model_dir.read_manifest(directory), 'input_size': list(served.input_size), 'delta': served.delta,
              'max_words': served.max_words}
  return model_dir.ModelDirectory(model_dir.read_model_config(directory), None, table, manifest, directory), served


@functools.partial(jax.jit, static_argnums=(1, 2))
def _normalised(frames, height: int, width: int):
  resized = jax.image.resize(frames.astype(jnp.float32), (frames.shape[0], height, width, 3), 'linear',
                             antialias=True)
  return (resized / 255.0 - normalisation.IMAGENET_MEAN) / normalisation.IMAGENET_STD


def normalised_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 RGB frames [F, h, w, 3] → the model's normalised input [F, height, width, 3]: the antialiased bilinear
  resize and ImageNet normalisation of training's `input_pipeline.normalised_frames`, without TensorFlow."""
  return np.asarray(_normalised(frames, height, width))


class FrameReader(contextlib.ExitStack):
  """Frames of a video file or of a folder of images (local or in a bucket), in order, as (index, uint8 RGB).

  Use it as a context manager: entering decodes every frame once (a video in a bucket is copied to a local
  temporary file while open), so that unreadable frames are known before any output is written. They are an
  error naming how many of how many frames could be read, unless `allow_unreadable_frames` (then a warning);
  iterating skips them, and the others keep their index in the video. `total` counts the frames the container
  says it holds (or those found), `readable` those decoded, `unreadable` lists the indices of the others.
  """

  def __init__(self, source, allow_unreadable_frames: bool = False):
    super().__init__()
    self.source = paths.path(source)
    self.allow_unreadable_frames = allow_unreadable_frames
    self.files, self.local, self.count = None, None, None
    if self.source.is_dir():
      names = [p for p in self.source.iterdir() if p.name.lower().endswith(IMAGE_EXTENSIONS)]
      natural = lambda path: [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', path.name)]
      self.files = sorted(names, key=natural)
      if not self.files:
        raise ValueError(f'{self.source} holds no image files ({", ".join(IMAGE_EXTENSIONS)})')
      self.count, self.fps = len(self.files), 10.0
    elif not self.source.exists():
      raise FileNotFoundError(f'Video {self.source} does not exist')

  def __enter__(self) -> 'FrameReader':
    super().__enter__()
    try:
      if self.files is None:
        self.local = self.enter_context(paths.local_copy(self.source))
        capture = cv2.VideoCapture(self.local)
        if not capture.isOpened():
          raise ValueError(f'{self.source} is not a video OpenCV can read')
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.count = count if count > 0 else None
        self.fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
        capture.release()
      self._check_frames()
    except BaseException:
      self.close()  # removes the local copy: `with` does not exit a context whose entering failed
      raise
    return self

  def _check_frames(self) -> None:
    self.unreadable, self.readable, size = [], 0, None
    for index, frame in tqdm.tqdm(self._decoded(), total=self.count, unit='frame', desc='check frames',
                                  leave=False):
      if frame is None:
        self.unreadable.append(index)
        continue
      self.readable += 1
      if size is None:
        size = frame.shape[:2]
      elif frame.shape[:2] != size:
        name = self.files[index] if self.files is not None else f'Frame {index} of {self.source}'
        raise ValueError(f'{name} is {frame.shape[1]}x{frame.shape[0]}, the first frame {size[1]}x{size[0]}: all '
                         'frames of a video must have one size')
    self.total = max(self.count or 0, self.readable + len(self.unreadable))
    if not self.readable:
      raise ValueError(f'{self.source} has no decodable frames' + (
          f' ({self._unreadable_names()} could not be read)' if self.unreadable else ''))
    if not self.unreadable:
      return
    if not self.allow_unreadable_frames:
      raise ValueError(f'Only {self.readable} of the {self.total} frames of {self.source} could be read '
                       f'({self._unreadable_names()} are damaged or missing). Pass --allow_unreadable_frames '
                       '(allow_unreadable_frames=True) to segment the readable ones')
    logging.warning('%d of the %d frames of %s could not be read (%s): segmenting the other %d', len(self.unreadable),
                    self.total, self.source, self._unreadable_names(), self.readable)

  def _unreadable_names(self) -> str:
    """The unreadable files, or the frame ranges ("frames 11-27, 59"), the first few of them."""
    if self.files is not None:
      prefix, names = '', [self.files[i].name for i in self.unreadable]
    else:
      prefix, runs = 'frames ' if len(self.unreadable) > 1 else 'frame ', []
      for index in self.unreadable:
        if runs and runs[-1][1] == index - 1:
          runs[-1][1] = index
        else:
          runs.append([index, index])
      names = [str(first) if first == last else f'{first}-{last}' for first, last in runs]
    more = f' and {len(names) - NAMED_UNREADABLE} more' if len(names) > NAMED_UNREADABLE else ''
    return prefix + ', '.join(names[:NAMED_UNREADABLE]) + more

  def _decoded(self) -> Iterator[tuple[int, np.ndarray | None]]:
    """(index, uint8 RGB frame, or None where it cannot be decoded) of every frame."""
    if self.files is not None:
      for index, path in enumerate(self.files):
        frame = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        yield index, None if frame is None else cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
      return
    capture = cv2.VideoCapture(self.local)
    try:
      index = 0
      while True:
        ok, frame = capture.read()
        # Reading goes on after a failure up to the container's frame count: OpenCV fails on every frame of a
        # damaged stretch, then reads those after it (each failure stands for one frame).
        if not ok and (self.count is None or index >= self.count):
          return
        yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if ok else None
        index += 1
    finally:
      capture.release()

  def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
    return ((index, frame) for index, frame in self._decoded() if frame is not None)


def encode_sentences(sentences: list[str], loaded: model_dir.ModelDirectory
                     ) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
  """(word_ids [S, N], word_mask [S, N], tokens per sentence).

  An empty sentence, or one without a word the model can use (only punctuation, such as "."), is an error: its
  masks would mean nothing. Warns about a sentence longer than the model's `max_words` (the rest is dropped) and
  about words outside the model's vocabulary (they get the zero vector).
  """
  if not sentences:
    raise ValueError('Give at least one sentence')
  max_words = loaded.max_words
  ids, masks, token_lists = [], [], []
  known = set(loaded.table.words)
  for sentence in sentences:
    if not sentence.strip():
      raise ValueError('A sentence is empty: describe the object to segment, e.g. "the dog jumping on the left"')
    every_token = tokenizer.tokenize(sentence)
    tokens, mask = tokenizer.pad_tokens(sentence, max_words)
    words = [t for t, m in zip(tokens, mask) if m and re.search(r'\w', t)]
    if not words:
      raise ValueError(f'The sentence {sentence!r} has no words the model can use (only punctuation): describe the '
                       'object to segment, e.g. "the dog jumping on the left"')
    dropped = every_token[max_words:]
    if dropped:
      logging.warning('The model reads the first %d words and separators of a sentence: %d words of %r are '
                      'dropped (%s)', max_words, sum(bool(re.search(r'\w', t)) for t in dropped), sentence,
                      ' '.join(t.strip() for t in dropped if t.strip()))
    unknown = [t for t in words if t not in known]
    if unknown and len(unknown) == len(words):
      logging.warning('None of the words of %r are in the model\'s vocabulary (%s): the model sees no words. %s',
                      sentence, ', '.join(unknown), _vocabulary_advice(loaded))
    elif unknown:
      logging.warning('Words of %r outside the model\'s vocabulary (they get the zero vector): %s. %s', sentence,
                      ', '.join(unknown), _vocabulary_advice(loaded))
    ids.append(loaded.table.ids(tokens))
    masks.append(mask)
    token_lists.append([t for t, m in zip(tokens, mask) if m])
  return np.stack(ids), np.stack(masks), token_lists


def _vocabulary_advice(loaded: model_dir.ModelDirectory) -> str:
  """What makes unknown words known: GloVe for a GloVe model; a model that learned its vectors knows only its own."""
  if loaded.table.trainable:
    return (f'This model learned vectors for the {len(loaded.table.words) - 2} words it was trained with (listed '
            f'in {loaded.path / model_dir.WORD_TABLE_FILE}): use words among them')
  return 'Give --glove_path to look them up in GloVe'


def extend_with_glove(loaded: model_dir.ModelDirectory, sentences: list[str], glove_path) -> None:
  """Adds the sentences' words that a GloVe-based model's table lacks, from the GloVe file."""
  if loaded.table.trainable:
    raise ValueError('This model learned its word vectors: a GloVe file cannot add words to it')
  missing = set(glove.vocabulary(sentences)) - set(loaded.table.words)
  if missing:
    extra = glove.from_glove(paths.path(glove_path), missing, dim=loaded.table.dim)
    loaded.table = glove.merge([loaded.table, extra])


def _slug(text: str) -> str:
  return re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_')[:40] or 'sentence'


def predict(model_directory, video, sentences: list[str], output_dir, *, batch_size: int = 8,
            delta: int | None = None, attention: bool = False, attention_stage: int = 5, attention_layer: int = 0,
            attention_frames: tuple[int, ...] = (), glove_path=None, allow_unreadable_frames: bool = False,
            serving: bool = False) -> dict:
  """Segments every frame of `video` for each sentence; returns the summary also written to predictions.json.

  Frames that cannot be decoded (a damaged video) are an error unless `allow_unreadable_frames`: then they are
  skipped with a warning and listed in the summary. `serving`: run the model directory's serving artefact
  (serving/, written by --mode=export) instead of the model code (no attention maps).
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  if delta is not None and delta < 1:
    raise ValueError(f'delta must be positive, got {delta}')
  if serving and attention:
    raise ValueError('The serving artefact computes probabilities only: attention maps need the model code (drop '
                     '--serving)')
  loaded, served = load_serving(model_directory) if serving else (load_model(model_directory), None)
  if glove_path:
    extend_with_glove(loaded, sentences, glove_path)
  word_ids, word_mask, tokens = encode_sentences(sentences, loaded)
  delta = loaded.delta if delta is None else delta
  if attention:
    _check_attention(loaded.model_config, attention_stage, attention_layer)
  output_dir = paths.path(output_dir)
  with FrameReader(video, allow_unreadable_frames) as frames:
    paths.check_writable(output_dir)
    return _predict(loaded, frames, sentences, word_ids, word_mask, tokens, output_dir, batch_size, delta,
                    attention, attention_stage, attention_layer, attention_frames, served)


def _check_attention(config, stage: int, layer: int) -> None:
  """The errors `inference.attention_maps` would raise at the first attention frame, before any output exists."""
  if config.bridge != 'language':
    raise ValueError('Attention maps show the words\' attention: the model has no language bridge')
  if stage not in config.lbdt_stages:
    raise ValueError(f'The model has no LBDT module in stage {stage} (it has {list(config.lbdt_stages)})')
  if not 0 <= layer < config.num_lbdt_layers:
    raise ValueError(f'The model has {config.num_lbdt_layers} LBDT layers, not a layer {layer}')


def _predict(loaded, frames: FrameReader, sentences, word_ids, word_mask, tokens, output_dir: epath.Path,
             batch_size, delta, attention, attention_stage, attention_layer, attention_frames,
             served: serving_artefact.ServingModel | None = None) -> dict:
  height, width = loaded.input_size
  count = len(sentences)
  if served is None:
    model = LBDT(loaded.model_config)
    params = jax.device_put({'model': loaded.variables['params'], 'word_vectors': loaded.table.vectors})
    batch_stats = jax.device_put(loaded.variables['batch_stats'])
    compiled = jax.jit(functools.partial(inference.probabilities, model), static_argnums=3)
    run = lambda inputs, capture: compiled(params, batch_stats, inputs, capture)
  else:  # the word table may have grown from GloVe: the artefact takes any vocabulary size
    vectors = jax.device_put(loaded.table.vectors)
    run = lambda inputs, capture: served.probabilities(*(inputs[key] for key in inference.MODEL_INPUTS),
                                                       word_vectors=vectors)
  mask_dirs = [output_dir / 'masks' / f'{k}_{_slug(s)}' for k, s in enumerate(sentences)]
  colours = [visualize.COLOURS[k % len(visualize.COLOURS)] for k in range(count)]
  stats = [[] for _ in sentences]
  writer, gif_frames = None, []
  gif_stride = max(1, -(-frames.readable // MAX_GIF_FRAMES))
  wanted_attention = set(attention_frames) if attention_frames else {delta}
  recent = collections.deque(maxlen=delta + 1)  # (index, normalised frame) of the last δ+1 frames read
  pending = []  # (index, rgb frame, normalised frame, normalised previous frame)
  attention_paths = []
  progress = tqdm.tqdm(total=frames.readable, unit='frame', desc='predict')
  outputs = contextlib.ExitStack()

  def flush():
    nonlocal writer
    if not pending:
      return
    real = len(pending)
    frame_batch = np.stack([p[2] for p in pending] + [pending[0][2]] * (batch_size - real))
    previous_batch = np.stack([p[3] for p in pending] + [pending[0][3]] * (batch_size - real))
    difference = np.abs(frame_batch - previous_batch)
    inputs = {'frame': np.repeat(frame_batch, count, 0), 'frame_difference': np.repeat(difference, count, 0),
              'word_ids': np.tile(word_ids, (batch_size, 1)), 'word_mask': np.tile(word_mask, (batch_size, 1))}
    capture = attention and any(p[0] in wanted_attention for p in pending)
    probabilities, captured = run(inputs, True) if capture else (run(inputs, False), None)
    probabilities = np.asarray(probabilities).reshape(batch_size, count, height, width)
    for row, (index, rgb, _, _) in enumerate(pending):
      shown = rgb.copy()
      for k in range(count):
        full = cv2.resize(probabilities[row, k], (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
        mask = full > 0.5
        visualize.save_png(mask_dirs[k] / f'{index:05d}.png', mask.astype(np.uint8) * 255)
        stats[k].append({'frame': index, 'area': int(mask.sum()),
                         'mean_foreground_probability': float(full[mask].mean()) if mask.any() else 0.0})
        shown = visualize.overlay(shown, mask, colours[k])
      if capture and index in wanted_attention:
        attention_paths.extend(_save_attention(output_dir, index, rgb, difference[row], captured, row, count,
                                               tokens, attention_stage, attention_layer, loaded))
      shown = _captions(shown, sentences, colours)
      if writer is None:
        local = outputs.enter_context(paths.local_output(output_dir / 'overlay.mp4'))
        writer = outputs.enter_context(visualize.H264Writer(local, frames.fps, shown.shape[:2]))
      writer.write(shown)
      if index % gif_stride == 0 and len(gif_frames) < MAX_GIF_FRAMES:
        scale = min(1.0, GIF_WIDTH / shown.shape[1])
        gif_frames.append(cv2.resize(shown, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
    progress.update(real)
    pending.clear()

  with outputs:
    for index, rgb in frames:
      normalised = normalised_frames(rgb[None], height, width)[0]
      recent.append((index, normalised))
      # The frame δ earlier; the closest readable one before it when it is unreadable; the first one at the start.
      previous = next((frame for i, frame in reversed(recent) if i <= index - delta), recent[0][1])
      pending.append((index, rgb, normalised, previous))
      if len(pending) == batch_size:
        flush()
    flush()
  progress.close()
  gif = visualize.save_gif(output_dir / 'overlay.gif', _same_size(gif_frames), fps=frames.fps / gif_stride)
  summary = {'video': str(frames.source), 'model': str(loaded.path), 'delta': delta,
             'input_size': [height, width], 'frames': len(stats[0]), 'unreadable_frames': frames.unreadable,
             'sentences': [{'sentence': s, 'tokens': t, 'masks': str(d), 'frames': f}
                           for s, t, d, f in zip(sentences, tokens, mask_dirs, stats)],
             'overlay_video': str(output_dir / 'overlay.mp4'), 'overlay_gif': str(gif),
             'attention_maps': [str(p) for p in attention_paths]}
  paths.write_json(output_dir / 'predictions.json', summary)
  print(f'{len(stats[0])} frames x {count} sentences segmented. Masks: {output_dir / "masks"}; '
        f'overlay: {summary["overlay_video"]} and {summary["overlay_gif"]}; per-frame areas: '
        f'{output_dir / "predictions.json"}' +
        (f'; attention maps: {", ".join(summary["attention_maps"])}' if attention_paths else ''))
  return summary


def _same_size(images: list[np.ndarray]) -> list[np.ndarray]:
  height, width = images[0].shape[:2]
  return [image if image.shape[:2] == (height, width) else cv2.resize(image, (width, height)) for image in images]


def _captions(image: np.ndarray, sentences: list[str], colours) -> np.ndarray:
  for sentence, colour in zip(reversed(sentences), reversed(colours)):
    image = visualize.captioned(image, sentence, colour)
  return image


def _save_attention(output_dir: epath.Path, index, rgb, difference, captured, row, count, tokens, stage, layer,
                    loaded: model_dir.ModelDirectory) -> list[epath.Path]:
  """One PNG per sentence: its words' attention over the frame and the frame difference."""
  maps = inference.attention_maps(jax.tree.map(np.asarray, captured), loaded.model_config, stage, layer)
  height, width = loaded.input_size
  grid_size = (height // 2**stage, width // 2**stage)  # stage s works at 1/2^s of the input
  saved = []
  for k in range(count):
    picture = visualize.attention_picture(rgb, difference, {name: value[row * count + k] for name, value in
                                                            maps.items()}, tokens[k], grid_size)
    saved.append(visualize.save_png(
        output_dir / 'attention' / f'frame{index:05d}_sentence{k}_stage{stage}_layer{layer}.png', picture))
  return saved

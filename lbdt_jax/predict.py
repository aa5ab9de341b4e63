"""Run a model on your own video: `predict(model_dir, video, sentences, output_dir)` (`--mode=predict`).

Frames are streamed from a video file (anything OpenCV reads) or a folder of images; each frame is paired with
the frame δ earlier (clamped at the start) and resized to the model's input size as in training, and every
(frame, sentence) pair of a batch goes through one jitted call. Probabilities are brought back to the frame's own
size. Written to the output folder:

  masks/<k>_<sentence>/<frame>.png   binary masks (0/255) per sentence and frame
  overlay.mp4, overlay.gif           every sentence's mask in its own colour, sentences as captions
  predictions.json                   per sentence and frame: mask area (pixels) and mean foreground probability
  attention/frame<f>_stage<s>_layer<l>.png   with `attention=True`: per word, its attention over the frame and
                                     over the frame difference (paper Fig. 6)

Memory stays bounded: only the last δ frames are kept; the GIF keeps at most `MAX_GIF_FRAMES` frames (evenly
subsampled) at reduced size.
"""

import collections
import dataclasses
import functools
import json
import logging
import os
import re

import cv2
import imageio.v3 as iio
import jax
import numpy as np
import tqdm

from data_pipeline import glove, input_pipeline, tokenizer
from lbdt_jax import checkpointing, convert, evaluate, visualize
from lbdt_jax.models import LBDT, LBDTConfig

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
MAX_GIF_FRAMES = 120
GIF_WIDTH = 320


@dataclasses.dataclass
class LoadedModel:
  """A model directory in memory."""
  model_config: LBDTConfig
  variables: dict
  table: glove.WordTable
  manifest: dict

  @property
  def input_size(self) -> tuple[int, int]:
    return tuple(self.manifest['input_size'])


def load_model(directory: str) -> LoadedModel:
  """A model directory written by `--mode=export`, by training (workdir/export) or by `--mode=convert`."""
  directory = os.path.abspath(os.path.expanduser(directory))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'Model directory {directory} does not exist')
  model_config, variables = convert.load_converted(directory)
  manifest_path = os.path.join(directory, checkpointing.MANIFEST_FILE)
  manifest = {'input_size': [320, 320], 'delta': 6, 'max_words': tokenizer.MAX_WORDS}  # the paper's settings
  config_path = os.path.join(directory, 'config.json')
  if os.path.exists(config_path):  # model directories written before manifests existed
    with open(config_path) as f:
      config = json.load(f)
    manifest.update(input_size=[config['input_height'], config['input_width']], delta=config['data']['delta'],
                    max_words=config['max_words'])
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      manifest.update(json.load(f))
  table_path = os.path.join(directory, 'word_table.npz')
  if not os.path.exists(table_path):
    raise FileNotFoundError(f'{directory} has no word_table.npz: export the model with --mode=export '
                            '(converted checkpoints need the word table of the data they are used with)')
  return LoadedModel(model_config, variables, glove.WordTable.load(table_path), manifest)


class FrameReader:
  """Frames of a video file or of a folder of images, in order, as uint8 RGB; `count` may be None."""

  def __init__(self, source: str):
    self.source = os.path.abspath(os.path.expanduser(source))
    if os.path.isdir(self.source):
      names = [n for n in os.listdir(self.source) if n.lower().endswith(IMAGE_EXTENSIONS)]
      natural = lambda name: [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]
      self.files = [os.path.join(self.source, n) for n in sorted(names, key=natural)]
      if not self.files:
        raise ValueError(f'{self.source} holds no image files ({", ".join(IMAGE_EXTENSIONS)})')
      self.count, self.fps = len(self.files), 10.0
    elif os.path.isfile(self.source):
      self.files = None
      capture = cv2.VideoCapture(self.source)
      if not capture.isOpened():
        raise ValueError(f'{self.source} is not a video OpenCV can read')
      count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
      self.count = count if count > 0 else None
      self.fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
      capture.release()
    else:
      raise FileNotFoundError(f'Video {self.source} does not exist')

  def __iter__(self):
    if self.files is not None:
      for path in self.files:
        frame = cv2.imread(path, cv2.IMREAD_COLOR)
        if frame is None:
          raise ValueError(f'{path} is not a readable image')
        yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
      return
    capture = cv2.VideoCapture(self.source)
    produced = 0
    while True:
      ok, frame = capture.read()
      if not ok:
        break
      produced += 1
      yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    capture.release()
    if produced == 0:
      raise ValueError(f'{self.source} has no decodable frames')


def encode_sentences(sentences: list[str], loaded: LoadedModel) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
  """(word_ids [S, N], word_mask [S, N], tokens per sentence); warns about words outside the vocabulary."""
  if not sentences:
    raise ValueError('Give at least one sentence')
  max_words = loaded.manifest['max_words']
  ids, masks, token_lists = [], [], []
  known = set(loaded.table.words)
  for sentence in sentences:
    if not sentence.strip():
      raise ValueError('A sentence is empty: describe the object to segment, e.g. "the dog jumping on the left"')
    tokens, mask = tokenizer.pad_tokens(sentence, max_words)
    real = [t for t, m in zip(tokens, mask) if m and t.strip()]
    unknown = [t for t in real if t not in known and re.search(r'\w', t)]
    if unknown and len(unknown) == len([t for t in real if re.search(r'\w', t)]):
      logging.warning('None of the words of %r are in the model\'s vocabulary (%s): the model sees no words. '
                      'Give --glove_path to look them up.', sentence, ', '.join(unknown))
    elif unknown:
      logging.warning('Words of %r outside the model\'s vocabulary (they get the zero vector): %s', sentence,
                      ', '.join(unknown))
    ids.append(loaded.table.ids(tokens))
    masks.append(mask)
    token_lists.append([t for t, m in zip(tokens, mask) if m])
  return np.stack(ids), np.stack(masks), token_lists


def extend_with_glove(loaded: LoadedModel, sentences: list[str], glove_path: str) -> None:
  """Adds the sentences' words that a GloVe-based model's table lacks, from the GloVe file."""
  if loaded.table.trainable:
    raise ValueError('This model learned its word vectors: a GloVe file cannot add words to it')
  missing = set(glove.vocabulary(sentences)) - set(loaded.table.words)
  if missing:
    extra = glove.from_glove(glove_path, missing, dim=loaded.table.dim)
    from data_pipeline import prepare  # pylint: disable=import-outside-toplevel
    loaded.table = prepare.merge([loaded.table, extra])


def _slug(text: str) -> str:
  return re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_')[:40] or 'sentence'


def _attention_maps(attention: dict, config: LBDTConfig, stage: int, layer: int) -> dict[str, np.ndarray]:
  """{'frame' | 'difference': [B, words, h*w]}: the head-averaged weights with which the words of one LBDT layer
  aggregate their source stream (eqs. 4-6): the frame (spatial stream) when the layer updates the temporal
  stream, the frame difference (temporal stream) when it updates the spatial one."""
  if config.bridge != 'language':
    raise ValueError('Attention maps show the words\' attention: the model has no language bridge')
  module = attention.get(f'lbdt_stage{stage}')
  if module is None:
    raise ValueError(f'The model has no LBDT module in stage {stage} (it has {list(config.lbdt_stages)})')
  if not 0 <= layer < config.num_lbdt_layers:
    raise ValueError(f'The model has {config.num_lbdt_layers} LBDT layers, not a layer {layer}')
  sources = {'spatial': 'frame', 'temporal': 'difference'}
  targets = config.transfer_targets()
  if config.share_direction_weights:  # one layer called once per direction, in the order of `targets`
    calls = module[f'layer{layer}']['word_source_attention']['attention_weights']
    weights = dict(zip(targets.values(), calls))
  else:
    weights = {source: module[f'layer{layer}_to_{target}']['word_source_attention']['attention_weights'][0]
               for target, source in targets.items()}
  return {sources[source]: np.asarray(w, np.float32).mean(axis=1) for source, w in weights.items()}


def _attention_grid(image: np.ndarray, difference: np.ndarray, maps: dict[str, np.ndarray], tokens: list[str],
                    grid_size: tuple[int, int]) -> np.ndarray:
  """Rows of [word | attention over the frame | attention over the frame difference]."""
  height, width = image.shape[:2]
  rows = []
  for w, token in enumerate(tokens):
    cells = []
    for name, base in (('frame', image), ('difference', difference)):
      if name not in maps:
        continue
      heat = maps[name][w].reshape(grid_size)
      heat = cv2.resize(heat / max(heat.max(), 1e-12), (width, height), interpolation=cv2.INTER_CUBIC)
      colour = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
      cells.append(visualize.captioned((0.5 * base + 0.5 * colour).astype(np.uint8), f'"{token}" on the {name}'))
    rows.append(np.concatenate(cells, axis=1))
  return np.concatenate(rows, axis=0)


def predict(model_dir: str, video: str, sentences: list[str], output_dir: str, *, batch_size: int = 8,
            delta: int | None = None, attention: bool = False, attention_stage: int = 5, attention_layer: int = 0,
            attention_frames: tuple[int, ...] = (), glove_path: str | None = None) -> dict:
  """Segments every frame of `video` for each sentence; returns the summary also written to predictions.json."""
  loaded = load_model(model_dir)
  if glove_path:
    extend_with_glove(loaded, sentences, glove_path)
  frames = FrameReader(video)
  word_ids, word_mask, tokens = encode_sentences(sentences, loaded)
  delta = loaded.manifest['delta'] if delta is None else delta
  if delta < 1 or batch_size < 1:
    raise ValueError(f'delta and batch_size must be positive, got {delta} and {batch_size}')
  height, width = loaded.input_size
  model = LBDT(loaded.model_config)
  params = jax.device_put({'model': loaded.variables['params'], 'word_vectors': loaded.table.vectors})
  batch_stats = jax.device_put(loaded.variables['batch_stats'])
  count = len(sentences)
  compiled = jax.jit(functools.partial(evaluate.predict_probabilities, model), static_argnums=3)
  output_dir = os.path.abspath(output_dir)
  mask_dirs = [os.path.join(output_dir, 'masks', f'{k}_{_slug(s)}') for k, s in enumerate(sentences)]
  for directory in mask_dirs:
    os.makedirs(directory, exist_ok=True)
  colours = [visualize.COLOURS[k % len(visualize.COLOURS)] for k in range(count)]
  stats = [[] for _ in sentences]
  writer, gif_frames = None, []
  gif_stride = max(1, -(-frames.count // MAX_GIF_FRAMES)) if frames.count else 1
  wanted_attention = set(attention_frames) if attention_frames else {delta}
  recent = collections.deque(maxlen=delta + 1)  # normalised frames t-δ..t
  pending = []  # (index, rgb frame, normalised frame, normalised previous frame)
  attention_paths = []
  progress = tqdm.tqdm(total=frames.count, unit='frame', desc='predict')

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
    probabilities, captured = compiled(params, batch_stats, inputs, True) if capture else (
        compiled(params, batch_stats, inputs, False), None)
    probabilities = np.asarray(probabilities).reshape(batch_size, count, height, width)
    for row, (index, rgb, normalised, _) in enumerate(pending):
      shown = rgb.copy()
      for k in range(count):
        full = cv2.resize(probabilities[row, k], (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
        mask = full > 0.5
        cv2.imwrite(os.path.join(mask_dirs[k], f'{index:05d}.png'), mask.astype(np.uint8) * 255)
        stats[k].append({'frame': index, 'area': int(mask.sum()),
                         'mean_foreground_probability': float(full[mask].mean()) if mask.any() else 0.0})
        shown = visualize.overlay(shown, mask, colours[k])
      if capture and index in wanted_attention:
        attention_paths.extend(_save_attention(output_dir, index, rgb, difference[row], captured, row, count,
                                               tokens, attention_stage, attention_layer, loaded))
      shown = _captions(shown, sentences, colours)
      if writer is None:
        writer = cv2.VideoWriter(os.path.join(output_dir, 'overlay.mp4'), cv2.VideoWriter_fourcc(*'mp4v'),
                                 frames.fps, (shown.shape[1], shown.shape[0]))
      writer.write(cv2.cvtColor(shown, cv2.COLOR_RGB2BGR))
      if index % gif_stride == 0 and len(gif_frames) < MAX_GIF_FRAMES:
        scale = min(1.0, GIF_WIDTH / shown.shape[1])
        gif_frames.append(cv2.resize(shown, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
    progress.update(real)
    pending.clear()

  size = None
  for index, rgb in enumerate(frames):
    if size is None:
      size = rgb.shape[:2]
    elif rgb.shape[:2] != size:
      raise ValueError(f'Frame {index} of {frames.source} is {rgb.shape[1]}x{rgb.shape[0]}, the first was '
                       f'{size[1]}x{size[0]}: all frames of a video must have one size')
    normalised = input_pipeline.normalised_frames(rgb[None], height, width)[0]
    recent.append(normalised)
    pending.append((index, rgb, normalised, recent[0]))  # recent[0]: δ frames earlier, or the first frame
    if len(pending) == batch_size:
      flush()
  if size is None:
    raise ValueError(f'{frames.source} has no frames')
  flush()
  progress.close()
  writer.release()
  iio.imwrite(os.path.join(output_dir, 'overlay.gif'), np.stack(_same_size(gif_frames)),
              duration=1000.0 * gif_stride / frames.fps, loop=0)
  summary = {'video': frames.source, 'model': os.path.abspath(model_dir), 'delta': delta,
             'input_size': [height, width], 'frames': len(stats[0]),
             'sentences': [{'sentence': s, 'tokens': t, 'masks': d, 'frames': f}
                           for s, t, d, f in zip(sentences, tokens, mask_dirs, stats)],
             'overlay_video': os.path.join(output_dir, 'overlay.mp4'),
             'overlay_gif': os.path.join(output_dir, 'overlay.gif'), 'attention_maps': attention_paths}
  with open(os.path.join(output_dir, 'predictions.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  print(f'{len(stats[0])} frames x {count} sentences segmented. Masks: {os.path.join(output_dir, "masks")}; '
        f'overlay: {summary["overlay_video"]} and {summary["overlay_gif"]}; per-frame areas: '
        f'{os.path.join(output_dir, "predictions.json")}' +
        (f'; attention maps: {", ".join(attention_paths)}' if attention_paths else ''))
  return summary


def _same_size(images: list[np.ndarray]) -> list[np.ndarray]:
  height, width = images[0].shape[:2]
  return [image if image.shape[:2] == (height, width) else cv2.resize(image, (width, height)) for image in images]


def _captions(image: np.ndarray, sentences: list[str], colours) -> np.ndarray:
  for sentence, colour in zip(reversed(sentences), reversed(colours)):
    image = visualize.captioned(image, sentence, colour)
  return image


def _save_attention(output_dir, index, rgb, difference, captured, row, count, tokens, stage, layer,
                    loaded: LoadedModel) -> list[str]:
  """One PNG per sentence: its words' attention over the frame and the frame difference."""
  paths = []
  for k in range(count):
    grid = attention_picture(captured, row * count + k, loaded.model_config, loaded.input_size, rgb,
                             difference, tokens[k], stage, layer)
    path = os.path.join(output_dir, 'attention', f'frame{index:05d}_sentence{k}_stage{stage}_layer{layer}.png')
    paths.append(visualize.save_png(path, grid))
  return paths


def attention_picture(captured: dict, row: int, model_config: LBDTConfig, input_size: tuple[int, int],
                      rgb: np.ndarray, difference: np.ndarray, tokens: list[str], stage: int, layer: int) -> np.ndarray:
  """Paper Fig. 6 for one sample: per word, its attention over the frame and over the frame difference."""
  maps = _attention_maps(jax.tree.map(np.asarray, captured), model_config, stage, layer)
  height, width = input_size
  grid_size = (height // 2**stage, width // 2**stage)  # stage s works at 1/2^s of the input
  image = visualize.upscale(rgb, 160)
  shown_difference = cv2.resize(visualize.difference_image(difference), (image.shape[1], image.shape[0]))
  return _attention_grid(image, shown_difference, {name: value[row] for name, value in maps.items()}, tokens,
                         grid_size)

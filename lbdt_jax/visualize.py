"""Pictures for people: frames with the predicted mask overlaid and the sentence as caption; grids, GIFs and
H.264 videos."""

import io
import warnings

import cv2
import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
from etils import epath

from data_pipeline.normalisation import IMAGENET_MEAN, IMAGENET_STD

COLOURS = ((255, 64, 64), (64, 160, 255), (80, 220, 80), (255, 200, 0), (200, 90, 255), (0, 220, 220))  # RGB
ATTENTION_CELL_WIDTH = 320  # px: two cells side by side fit a screen, whatever the video's size


def denormalise(frame: np.ndarray) -> np.ndarray:
  """An ImageNet-normalised float frame [H, W, 3] → uint8 RGB."""
  return np.clip((frame * IMAGENET_STD + IMAGENET_MEAN) * 255.0, 0, 255).round().astype(np.uint8)


def difference_image(difference: np.ndarray, gain: float = 2.0) -> np.ndarray:
  """A (normalised) frame difference [H, W, 3] as a viewable uint8 image, brightened by `gain`."""
  return np.clip(difference * IMAGENET_STD * 255.0 * gain, 0, 255).round().astype(np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray, colour=COLOURS[0], alpha: float = 0.5) -> np.ndarray:
  """The mask tinted over the image, outlined in black and white: a tint alone vanishes on an object of its colour,
  and one of the two lines stands out on any background."""
  mask = mask.astype(bool)
  out = image.astype(np.float32)
  out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour, np.float32)
  out = out.round().astype(np.uint8)
  contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
  light = max(1, round(min(mask.shape) / 360))  # 1 px at 360p, 2 px at 720p
  cv2.drawContours(out, contours, -1, (0, 0, 0), light + 2)
  cv2.drawContours(out, contours, -1, (255, 255, 255), light)
  return out


def upscale(image: np.ndarray, min_side: int = 256) -> np.ndarray:
  scale = max(1, int(np.ceil(min_side / min(image.shape[:2]))))
  return cv2.resize(image, (image.shape[1] * scale, image.shape[0] * scale), interpolation=cv2.INTER_NEAREST)


def captioned(image: np.ndarray, text: str, colour=(255, 255, 255)) -> np.ndarray:
  """The image under a black band holding the text (wrapped to the image width), in letters that grow with the
  width so that they stay readable when the picture is shown at screen size."""
  font, scale = cv2.FONT_HERSHEY_SIMPLEX, min(max(image.shape[1] / 700, 0.45), 2.0)
  thickness, line_height = 1 + int(scale >= 1), round(40 * scale)
  lines, line = [], ''
  for word in text.split():
    candidate = f'{line} {word}'.strip()
    if line and cv2.getTextSize(candidate, font, scale, thickness)[0][0] > image.shape[1] - 8:
      lines.append(line)
      line = word
    else:
      line = candidate
  lines.append(line)
  band = np.zeros((line_height * len(lines) + line_height // 3, image.shape[1], 3), np.uint8)
  for row, text_line in enumerate(lines):
    cv2.putText(band, text_line, (4, line_height * (row + 1)), font, scale, tuple(int(c) for c in colour),
                thickness, cv2.LINE_AA)
  return np.concatenate([band, image])


def grid(images: list[np.ndarray], columns: int = 4) -> np.ndarray:
  """Images of one width side by side in rows (shorter ones padded with black at the bottom)."""
  height = max(image.shape[0] for image in images)
  padded = [np.pad(image, ((0, height - image.shape[0]), (0, 0), (0, 0))) for image in images]
  padded += [np.zeros_like(padded[0])] * (-len(padded) % columns)
  rows = [np.concatenate(padded[i:i + columns], axis=1) for i in range(0, len(padded), columns)]
  return np.concatenate(rows, axis=0)


def attention_picture(image: np.ndarray, difference: np.ndarray, maps: dict[str, np.ndarray], tokens: list[str],
                      grid_size: tuple[int, int]) -> np.ndarray:
  """Paper Fig. 6 for one sample: rows of [word | its attention over the frame | over the frame difference].

  `image` is uint8 RGB, `difference` the normalised frame difference, `maps` {'frame' | 'difference': [words,
  h*w]} (`lbdt_jax.inference.attention_maps` of this sample) on a `grid_size` = (h, w) grid. Each cell is
  `ATTENTION_CELL_WIDTH` px wide, whatever the image's size.
  """
  width = ATTENTION_CELL_WIDTH
  height = max(1, round(image.shape[0] * width / image.shape[1]))
  image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if image.shape[1] > width else
                     cv2.INTER_LINEAR)
  shown = {'frame': image, 'difference': cv2.resize(difference_image(difference), (width, height))}
  rows = []
  for w, token in enumerate(tokens):
    cells = []
    for name, base in shown.items():
      if name not in maps:
        continue
      heat = maps[name][w].reshape(grid_size)
      heat = cv2.resize(heat / max(heat.max(), 1e-12), (width, height), interpolation=cv2.INTER_CUBIC)
      colour = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
      cells.append(captioned((0.5 * base + 0.5 * colour).astype(np.uint8), f'"{token}" on the {name}'))
    rows.append(np.concatenate(cells, axis=1))
  return np.concatenate(rows, axis=0)


def png_bytes(image: np.ndarray) -> bytes:
  """An RGB (or single-channel) uint8 image as PNG bytes."""
  if image.ndim == 3:
    image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
  return cv2.imencode('.png', image)[1].tobytes()


def save_png(path: epath.Path, image: np.ndarray) -> epath.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(png_bytes(image))
  return path


def save_gif(path: epath.Path, frames: list[np.ndarray], fps: float = 4.0) -> epath.Path:
  buffer = io.BytesIO()
  iio.imwrite(buffer, np.stack(frames), extension='.gif', duration=1000.0 / fps, loop=0)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buffer.getvalue())
  return path


class H264Writer:
  """Writes uint8 RGB frames of one size to an H.264 mp4 (yuv420p, which browsers play) through imageio-ffmpeg's
  own ffmpeg; yuv420p needs even sizes, so an odd height or width gets a black row or column."""

  def __init__(self, path: str, fps: float, size: tuple[int, int]):
    self.size = size  # (height, width) of the frames
    padded = (size[1] + size[1] % 2, size[0] + size[0] % 2)
    self._encoder = imageio_ffmpeg.write_frames(path, padded, fps=float(fps), codec='libx264', macro_block_size=1,
                                                ffmpeg_log_level='error', output_params=['-movflags', '+faststart'])
    with warnings.catch_warnings():
      # JAX warns at every fork; this one is followed at once by exec (of ffmpeg), which is safe.
      warnings.filterwarnings('ignore', 'os.fork', RuntimeWarning)
      self._encoder.send(None)  # starts ffmpeg

  def write(self, frame: np.ndarray) -> None:
    self._encoder.send(np.ascontiguousarray(np.pad(frame, ((0, self.size[0] % 2), (0, self.size[1] % 2), (0, 0)))))

  def close(self) -> None:
    self._encoder.close()

  def __enter__(self) -> 'H264Writer':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

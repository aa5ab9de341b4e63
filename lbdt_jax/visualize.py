"""Pictures for people: frames with the predicted mask overlaid and the sentence as caption; grids and GIFs."""

import io

import cv2
import imageio.v3 as iio
import numpy as np
from etils import epath

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
COLOURS = ((255, 64, 64), (64, 160, 255), (80, 220, 80), (255, 200, 0), (200, 90, 255), (0, 220, 220))  # RGB


def denormalise(frame: np.ndarray) -> np.ndarray:
  """An ImageNet-normalised float frame [H, W, 3] → uint8 RGB."""
  return np.clip((frame * IMAGENET_STD + IMAGENET_MEAN) * 255.0, 0, 255).round().astype(np.uint8)


def difference_image(difference: np.ndarray, gain: float = 2.0) -> np.ndarray:
  """A (normalised) frame difference [H, W, 3] as a viewable uint8 image, brightened by `gain`."""
  return np.clip(difference * IMAGENET_STD * 255.0 * gain, 0, 255).round().astype(np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray, colour=COLOURS[0], alpha: float = 0.5) -> np.ndarray:
  """The mask tinted over the image, with its outline."""
  mask = mask.astype(bool)
  out = image.astype(np.float32)
  out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour, np.float32)
  out = out.round().astype(np.uint8)
  contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
  cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), 1)
  return out


def upscale(image: np.ndarray, min_side: int = 256) -> np.ndarray:
  scale = max(1, int(np.ceil(min_side / min(image.shape[:2]))))
  return cv2.resize(image, (image.shape[1] * scale, image.shape[0] * scale), interpolation=cv2.INTER_NEAREST)


def captioned(image: np.ndarray, text: str, colour=(255, 255, 255)) -> np.ndarray:
  """The image under a black band holding the text (wrapped to the image width)."""
  font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
  lines, line = [], ''
  for word in text.split():
    candidate = f'{line} {word}'.strip()
    if line and cv2.getTextSize(candidate, font, scale, thickness)[0][0] > image.shape[1] - 8:
      lines.append(line)
      line = word
    else:
      line = candidate
  lines.append(line)
  band = np.zeros((18 * len(lines) + 6, image.shape[1], 3), np.uint8)
  for row, text_line in enumerate(lines):
    cv2.putText(band, text_line, (4, 18 * (row + 1)), font, scale, tuple(int(c) for c in colour), thickness,
                cv2.LINE_AA)
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
  h*w]} (`lbdt_jax.inference.attention_maps` of this sample) on a `grid_size` = (h, w) grid.
  """
  image = upscale(image, 160)
  height, width = image.shape[:2]
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

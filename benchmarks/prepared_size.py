"""Prepared size: a frame store beside the release it was prepared from, and beside the TFDS layout it replaced.

  python -m benchmarks.prepared_size [--sizes 1280x720,96x96] [--videos 12] [--frames 12] [--delta 6]
      [--max-delta 9] [--work-dir DIR] [--json OUT]

For each size, a synthetic release in the Refer-YouTube-VOS layout (`synthetic_release`: --videos training videos
of --frames frames) is prepared into a frame store with --max-delta. Reported: the release's bytes (JPEGImages,
Annotations, meta_expressions), the store's (every file of its directory: frames, masks, index), and what the
previous layout (one TFDS example per sample holding the encoded frame, the encoded previous frame at δ = --delta
and a PNG mask) would hold, summed over the store's samples as `SplitSource.example` gives them: the examples'
image bytes (masks as the store encodes them), without TFRecord framing and the examples' other fields.
Target: store ≤ 1.3 × release.
Generated data goes to --work-dir (default: a temporary directory, removed at the end).
"""

import argparse
import contextlib
import pathlib
import shutil
import tempfile
import time

import cv2
from PIL import Image

from benchmarks import harness
from data_pipeline import readers, store, synthetic_rvos
from lbdt_jax import metrics

TARGET_RATIO = 1.3
GENERATOR_MAX_SIDE = 1024  # the largest side synthetic_rvos.SyntheticConfig accepts
GENERATOR_MIN_SIDE = 32
SPLIT = 'train'


def parse_size(text: str) -> tuple[int, int]:
  """'1280x720' → (1280, 720): width, height."""
  width, _, height = text.partition('x')
  try:
    return int(width), int(height)
  except ValueError:
    raise argparse.ArgumentTypeError(f'a size is WIDTHxHEIGHT, e.g. 1280x720, got {text!r}') from None


def rendered_size(width: int, height: int) -> tuple[int, int]:
  """The size the generator renders a release of width×height at: the largest it allows with the same shape."""
  scale = min(1.0, GENERATOR_MAX_SIDE / max(width, height))
  return max(GENERATOR_MIN_SIDE, round(width * scale)), max(GENERATOR_MIN_SIDE, round(height * scale))


def _enlarge(root: pathlib.Path, width: int, height: int) -> None:
  """Every frame (bicubic, JPEG at the generator's quality) and label map (nearest, its palette kept) of a release
  to width×height."""
  for path in sorted(root.glob('*/JPEGImages/*/*.jpg')):
    frame = cv2.resize(cv2.imread(str(path)), (width, height), interpolation=cv2.INTER_CUBIC)
    if not cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, synthetic_rvos.JPEG_QUALITY]):
      raise OSError(f'could not write {path}')
  for path in sorted(root.glob('*/Annotations/*/*.png')):
    with Image.open(path) as labels:
      enlarged = labels.resize((width, height), Image.Resampling.NEAREST)
    enlarged.save(path, format='PNG')


def synthetic_release(directory: pathlib.Path, width: int, height: int, videos: int, frames: int) -> pathlib.Path:
  """A synthetic release in the Refer-YouTube-VOS layout, `videos` training videos of `frames` frames at
  width×height, generated once per setting under `directory`. The generator renders at most 1024 pixels a side:
  larger releases are rendered at `rendered_size` and enlarged, which leaves their frames smoother (smaller JPEGs)
  than frames rendered at full size."""
  root = directory / f'release_{width}x{height}_{videos}x{frames}'
  if root.is_dir():  # renamed into place only when whole
    return root
  render_width, render_height = rendered_size(width, height)
  # The other splits are empty: the reader wants each split's metadata.
  config = synthetic_rvos.SyntheticConfig(width=render_width, height=render_height, num_frames=frames,
                                          num_videos=tuple((split, videos if split == SPLIT else 0)
                                                           for split in synthetic_rvos.SPLITS))
  partial = root.with_name(f'{root.name}.partial')
  synthetic_rvos.generate(partial, config)  # replaces what an interrupted run left there
  if (render_width, render_height) != (width, height):
    _enlarge(partial, width, height)
  partial.rename(root)
  return root


def tree_bytes(root: pathlib.Path, pattern: str = '**/*') -> int:
  return sum(path.stat().st_size for path in root.glob(pattern) if path.is_file())


def prepare(release: pathlib.Path, directory: pathlib.Path, max_delta: int) -> store.Store:
  """The release's training split as a frame store in `directory` (made again if there is one)."""
  shutil.rmtree(directory, ignore_errors=True)
  return store.prepare_store(readers.SyntheticRVOSReader(release), directory, max_delta=max_delta, splits=(SPLIT,),
                             progress=False)


def previous_layout_bytes(source: store.SplitSource, delta: int) -> dict[str, int]:
  """The image bytes of the previous layout's examples: each sample's encoded frame, encoded previous frame at
  δ = delta and PNG mask."""
  sizes = {'frames_bytes': 0, 'previous_frames_bytes': 0, 'masks_bytes': 0}
  for index in range(len(source)):
    example = source.example(index, delta)
    sizes['frames_bytes'] += len(example['frame'])
    sizes['previous_frames_bytes'] += len(example['prev_frame'])
    sizes['masks_bytes'] += len(example['mask'])
  return {'bytes': sum(sizes.values()), **sizes}


def measure(work_dir: pathlib.Path, width: int, height: int, videos: int, frames: int, delta: int,
            max_delta: int) -> dict:
  release = synthetic_release(work_dir, width, height, videos, frames)
  directory = work_dir / f'store_{width}x{height}_{videos}x{frames}'
  start = time.perf_counter()
  source = prepare(release, directory, max_delta).split(SPLIT)
  prepare_seconds = time.perf_counter() - start
  summary = source.summary
  release_sizes = {'frames_bytes': tree_bytes(release, '*/JPEGImages/**/*'),
                   'annotations_bytes': tree_bytes(release, '*/Annotations/**/*'),
                   'metadata_bytes': tree_bytes(release, 'meta_expressions/**/*')}
  release_sizes['bytes'] = sum(release_sizes.values())
  store_sizes = {'bytes': tree_bytes(directory), 'frames_bytes': summary['frames_bytes'],
                 'masks_bytes': summary['masks_bytes']}
  store_sizes['index_bytes'] = store_sizes['bytes'] - summary['frames_bytes'] - summary['masks_bytes']
  previous = previous_layout_bytes(source, delta)
  return {'width': width, 'height': height, 'rendered_at': list(rendered_size(width, height)), 'videos': videos,
          'frames_per_video': frames, 'release_frames': len(list(release.glob('*/JPEGImages/*/*.jpg'))),
          'stored_frames': summary['frames'], 'masks': summary['masks'], 'samples': summary['samples'],
          'prepare_seconds': prepare_seconds, 'release': release_sizes, 'store': store_sizes,
          'previous_layout': previous, 'store_ratio': store_sizes['bytes'] / release_sizes['bytes'],
          'previous_layout_ratio': previous['bytes'] / release_sizes['bytes']}


def _mib(size: int) -> str:
  return f'{size / 2**20:.2f}'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--sizes', type=lambda text: [parse_size(size) for size in text.split(',')],
                      default=[(1280, 720), (96, 96)], help='release frame sizes, WIDTHxHEIGHT,...')
  parser.add_argument('--videos', type=int, default=12)
  parser.add_argument('--frames', type=int, default=12, help='frames per video')
  parser.add_argument('--delta', type=int, default=6, help="the previous layout's δ")
  parser.add_argument('--max-delta', type=int, default=store.DEFAULT_MAX_DELTA, help='the largest δ the store serves')
  parser.add_argument('--work-dir', help='where releases and stores are made (default: a temporary directory)')
  parser.add_argument('--json')
  args = parser.parse_args(argv)
  with contextlib.ExitStack() as stack:
    work_dir = pathlib.Path(args.work_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix='lbdt_sizes_')))
    work_dir.mkdir(parents=True, exist_ok=True)
    rows = [measure(work_dir, width, height, args.videos, args.frames, args.delta, args.max_delta)
            for width, height in args.sizes]
  result = {'machine': harness.machine(), 'delta': args.delta, 'max_delta': args.max_delta,
            'target_ratio': TARGET_RATIO, 'passed': all(row['store_ratio'] <= TARGET_RATIO for row in rows),
            'results': rows}
  print(f'{args.videos} synthetic videos x {args.frames} frames, Refer-YouTube-VOS layout; store δ <= '
        f'{args.max_delta}, previous layout δ = {args.delta} (image bytes of its examples)')
  print(metrics.markdown_table(
      ['frames', 'samples', 'release MiB', 'store MiB', 'store / release', 'of which frames / masks / index MiB',
       'previous layout MiB', 'previous / release', 'prepare s'],
      [[f'{row["width"]}x{row["height"]}', row['samples'], _mib(row['release']['bytes']),
        _mib(row['store']['bytes']), f'{row["store_ratio"]:.3f}',
        ' / '.join(_mib(row['store'][key]) for key in ('frames_bytes', 'masks_bytes', 'index_bytes')),
        _mib(row['previous_layout']['bytes']), f'{row["previous_layout_ratio"]:.2f}',
        f'{row["prepare_seconds"]:.1f}'] for row in rows]))
  print(f'Target store <= {TARGET_RATIO} x release: {"met" if result["passed"] else "MISSED"}')
  harness.write_json(args.json, result)
  return result


if __name__ == '__main__':
  main()

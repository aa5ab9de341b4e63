"""Input-pipeline throughput: training samples/s at 320x320 with 1, 2 and all cores.

  python -m benchmarks.input_pipeline [--size 320] [--source-size 320] [--batch 8] [--batches 40] [--repeats 3]

Source: the synthetic set rendered at --source-size (prepared on first use under --data-dir). Each measurement
reads --batches training batches (decode 2 JPEGs + 1 PNG, resize, normalise, frame difference, tokens) after one
warm-up batch, with tf.data limited to the given number of threads; the median over --repeats is reported, with
min and max. Prints a table and writes JSON (--json).
"""

import argparse
import json
import os
import statistics
import time

from configs import default
from data_pipeline import input_pipeline, prepare
from lbdt_jax import metrics


def samples_per_second(iterator: input_pipeline.TrainIterator, batches: int) -> float:
  next(iterator)  # warm-up: builds the pipeline and fills the prefetch buffer
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * iterator.batch_size / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--size', type=int, default=320, help='model input size')
  parser.add_argument('--source-size', type=int, default=320, help='resolution the synthetic videos are rendered at')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--batches', type=int, default=40)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--data-dir', default=os.path.expanduser('~/tensorflow_datasets'))
  parser.add_argument('--json')
  args = parser.parse_args()
  config = default.get_config()
  config.input_height = config.input_width = args.size
  config.data = default.data_config(train='synthetic_rvos:train', evaluate=())
  config.data.data_dir = args.data_dir
  config.data.synthetic = {'height': args.source_size, 'width': args.source_size, 'num_frames': 12,
                           'num_videos': {'train': 24, 'validation': 1, 'test': 1, 'test_compositional': 1}}
  prepared = prepare.prepare(config)
  table = input_pipeline.SentenceTable(prepare.sentences(prepared), prepare.word_table(prepared), config.max_words)
  options = input_pipeline.Preprocessing.from_config(config)
  cores = os.cpu_count()
  rows = []
  for threads in sorted({1, 2, cores}):
    rates = []
    for repeat in range(args.repeats):
      iterator = input_pipeline.TrainIterator(prepared['synthetic_rvos'], 'train', table, options,
                                              global_batch_size=args.batch, seed=repeat, num_threads=threads)
      rates.append(samples_per_second(iterator, min(args.batches, iterator.batches_per_epoch - 1)))
    rows.append({'threads': threads, 'median_samples_per_second': statistics.median(rates),
                 'min_samples_per_second': min(rates), 'max_samples_per_second': max(rates)})
  result = {'cpu_count': cores, 'input_size': args.size, 'source_size': args.source_size, 'batch': args.batch,
            'batches': args.batches, 'repeats': args.repeats, 'rows': rows}
  print(f'Input {args.size}x{args.size}, source {args.source_size}x{args.source_size}, batch {args.batch}, '
        f'{cores} cores')
  print(metrics.markdown_table(['tf.data threads', 'samples/s (median)', 'min', 'max'],
                               [[row['threads']] + [f'{row[f"{kind}_samples_per_second"]:.1f}'
                                                    for kind in ('median', 'min', 'max')] for row in rows]))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()

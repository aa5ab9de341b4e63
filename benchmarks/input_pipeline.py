"""The input pipeline: training samples/s and CPU seconds per sample of the Grain loader over a frame store, beside
the previous layout's tf.data reader on the same data in the same run, and the time to the first batch.

  python -m benchmarks.input_pipeline [--source-size 1280x720] [--size 320] [--threads 1,2] [--batch 8]
      [--batches 30] [--repeats 3] [--videos 12] [--frames 12] [--delta 6] [--work-dir DIR] [--json OUT]

Data: a synthetic release in the Refer-YouTube-VOS layout with JPEG frames at --source-size
(`benchmarks.prepared_size.synthetic_release`), its training split prepared into a frame store, and the same samples
written in the previous layout: a TFRecord file of examples that each hold the encoded frame, the encoded previous
frame (δ = --delta), the PNG mask and the sentence. Generated data goes to --work-dir (default: a temporary
directory, removed at the end).

Throughput: for each pipeline and number of reading threads, --repeats measurements (interleaved, so that both
pipelines meet the same load on a shared machine) of --batches training batches of --batch, after one warm-up
batch: samples/s (wall clock) and CPU seconds per sample (the process's CPU time over all its threads, the reliable
figure on a shared machine). The pipelines, both decoding, resizing to --size and normalising with
`input_pipeline.preprocess`:

  store     today's: `loader.TrainIterator`, one graph call per example in Grain's reading threads
  previous  the previous layout's reader, as the TFDS pipeline read it: TFRecord, parse, a shuffle buffer (the old
            default of 10,000, or the whole split if smaller), `preprocess` mapped in parallel, batch, prefetch;
            its threads are tf.data's private thread pool

Cores per accelerator = target samples/s × CPU seconds per sample (the median of the pipeline's measurements), for
the targets of docs/accelerators.md.

First batch (store only, reading with every core, as training does): at start-up (open the store, build the
sentence table and the iterator, first batch) and after a resume (the same with `set_state` to the middle of the
second epoch before the first batch), --repeats times each, before anything else runs in the process (the first
start-up pays TensorFlow's one-off costs, as a training process does).
"""

import argparse
import contextlib
import os
import pathlib
import statistics
import tempfile
import time

from benchmarks import harness, prepared_size
from data_pipeline import glove, input_pipeline, loader, store, tokenizer
from data_pipeline.tensorflow_cpu import tf
from lbdt_jax import metrics

PIPELINES = ('store', 'previous')
PREVIOUS_FEATURES = ('frame', 'prev_frame', 'mask', 'sentence')
PREVIOUS_SHUFFLE_BUFFER = 10_000
# The accelerator targets (docs/accelerators.md) as samples/s one accelerator consumes: LBDT-4 training at 40% MFU of
# an H100's or H200's dense bfloat16 peak (989.4 TFLOP/s, benchmarks.throughput.PEAK_TFLOPS) at 3 × 75.0 GFLOPs a
# sample (docs/performance.md#flops), and inference at 4,000 frames/s, each frame a sample with its previous frame.
TARGETS = {'training at 40% MFU': 0.40 * 989.4e12 / (3 * 75.0e9), 'inference at 4,000 frames/s': 4000.0}


def spread(values: list[float]) -> dict[str, float]:
  return {'median': statistics.median(values), 'min': min(values), 'max': max(values)}


def sentence_table(prepared: store.Store) -> input_pipeline.SentenceTable:
  """The store's sentences with learned word vectors (the pipeline looks up word ids only)."""
  words = glove.learned(glove.vocabulary(prepared.sentences))
  return input_pipeline.SentenceTable(prepared.sentences, words, tokenizer.MAX_WORDS)


def write_previous_layout(source: store.SplitSource, path: pathlib.Path, delta: int) -> None:
  """The split's samples as examples of the previous layout: both encoded frames, the mask and the sentence."""
  with tf.io.TFRecordWriter(os.fspath(path)) as writer:
    for index in range(len(source)):
      example = source.example(index, delta)
      features = {key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[
          example[key].encode() if isinstance(example[key], str) else example[key]])) for key in PREVIOUS_FEATURES}
      writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())


def previous_layout_batches(path: pathlib.Path, table: input_pipeline.SentenceTable,
                            options: input_pipeline.Preprocessing, *, batch_size: int, shuffle_buffer: int, seed: int,
                            threads: int):
  """Training batches of the previous layout's reader (numpy). Repeated before the shuffle, where the old reader built
  a new dataset per epoch: the buffer is filled once, and the measurement sees the steady state."""
  spec = {key: tf.io.FixedLenFeature([], tf.string) for key in PREVIOUS_FEATURES}
  dataset = tf.data.TFRecordDataset(os.fspath(path)).repeat()
  dataset = dataset.map(lambda record: tf.io.parse_single_example(record, spec), num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.shuffle(shuffle_buffer, seed=seed)
  dataset = dataset.map(lambda example: input_pipeline.preprocess(example, table, options, train=True),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(2)
  dataset_options = tf.data.Options()
  dataset_options.threading.private_threadpool_size = threads
  return dataset.with_options(dataset_options).as_numpy_iterator()


def measure(batches, count: int, batch_size: int) -> dict[str, float]:
  """samples/s and CPU seconds per sample over `count` batches, after a warm-up batch."""
  next(batches)  # the pipeline starts and fills its buffers
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(count):
    next(batches)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  samples = count * batch_size
  return {'samples_per_second': samples / wall, 'cpu_seconds_per_sample': cpu / samples}


def first_batch(directory: pathlib.Path, options: input_pipeline.Preprocessing, *, delta: int, batch_size: int,
                resume: bool) -> dict[str, float]:
  """Seconds to open the store, to build the sentence table and the iterator, and to the first batch (after
  set_state to the middle of the second epoch where `resume`)."""
  start = time.perf_counter()
  prepared = store.open_store(directory)
  source = prepared.split(prepared_size.SPLIT)
  opened = time.perf_counter()
  iterator = loader.TrainIterator(source, sentence_table(prepared), options, delta=delta,
                                  global_batch_size=batch_size, seed=0)
  built = time.perf_counter()
  if resume:
    iterator.set_state({'epoch': 1, 'batch': iterator.batches_per_epoch // 2})
  next(iterator)
  done = time.perf_counter()
  iterator.set_state(iterator.get_state())  # drops the read-ahead, which would run into the next measurement
  return {'open_seconds': opened - start, 'iterator_seconds': built - opened, 'first_batch_seconds': done - built,
          'total_seconds': done - start}


def throughput(directory: pathlib.Path, previous_file: pathlib.Path, options: input_pipeline.Preprocessing, args,
               shuffle_buffer: int) -> list[dict]:
  prepared = store.open_store(directory)
  source, table = prepared.split(prepared_size.SPLIT), sentence_table(prepared)
  runs = {(pipeline, threads): [] for threads in args.threads for pipeline in PIPELINES}
  for repeat in range(args.repeats):
    for threads in args.threads:
      iterator = loader.TrainIterator(source, table, options, delta=args.delta, global_batch_size=args.batch,
                                      seed=repeat, num_threads=threads)
      runs['store', threads].append(measure(iterator, args.batches, args.batch))
      iterator.set_state(iterator.get_state())  # drops the read-ahead
      batches = previous_layout_batches(previous_file, table, options, batch_size=args.batch,
                                        shuffle_buffer=shuffle_buffer, seed=repeat, threads=threads)
      runs['previous', threads].append(measure(batches, args.batches, args.batch))
      del batches  # stops tf.data's threads
  return [{'pipeline': pipeline, 'threads': threads,
           **{key: spread([run[key] for run in measured]) for key in ('samples_per_second', 'cpu_seconds_per_sample')},
           'runs': measured} for (pipeline, threads), measured in runs.items()]


def cores_per_accelerator(rows: list[dict]) -> list[dict]:
  cpu = {pipeline: statistics.median(run['cpu_seconds_per_sample'] for row in rows if row['pipeline'] == pipeline
                                     for run in row['runs']) for pipeline in PIPELINES}
  return [{'target': target, 'samples_per_second': rate, 'cpu_seconds_per_sample': cpu,
           'cores': {pipeline: rate * seconds for pipeline, seconds in cpu.items()}}
          for target, rate in TARGETS.items()]


def _seconds(values: dict[str, float]) -> str:
  return f'{values["median"]:.2f} ({values["min"]:.2f}–{values["max"]:.2f})'


def print_tables(result: dict) -> None:
  width, height = result['source_size']
  print(f'{harness.describe(result["machine"])}; {result["samples"]} samples, {width}x{height} JPEG frames '
        f'({result["frame_bytes_mean"] / 1024:.0f} KiB each) → {result["input_size"]}x{result["input_size"]}, batch '
        f'{result["batch"]}, {result["batches"]} batches per measurement, {result["repeats"]} repeats; load average '
        f'{result["load_average"]["start"]:.1f} at the start, {result["load_average"]["end"]:.1f} at the end')
  print(metrics.markdown_table(
      ['pipeline', 'reading threads', 'samples/s (median)', 'min–max', 'CPU ms/sample (median)', 'min–max'],
      [[row['pipeline'], row['threads'], f'{row["samples_per_second"]["median"]:.1f}',
        f'{row["samples_per_second"]["min"]:.1f}–{row["samples_per_second"]["max"]:.1f}',
        f'{1000 * row["cpu_seconds_per_sample"]["median"]:.1f}',
        f'{1000 * row["cpu_seconds_per_sample"]["min"]:.1f}–{1000 * row["cpu_seconds_per_sample"]["max"]:.1f}']
       for row in result['rows']]))
  print(metrics.markdown_table(
      ['accelerator target', 'samples/s', *(f'cores: {pipeline}' for pipeline in PIPELINES)],
      [[row['target'], f'{row["samples_per_second"]:,.0f}',
        *(f'{row["cores"][pipeline]:.0f}' for pipeline in PIPELINES)] for row in result['cores_per_accelerator']]))
  first = result['first_batch']
  print(f'First batch (store, {first["threads"]} reading threads), seconds: median (min–max)')
  print(metrics.markdown_table(
      ['', 'open the store', 'sentence table + iterator', 'first batch', 'total'],
      [[kind] + [_seconds(first[kind][key]) for key in ('open_seconds', 'iterator_seconds', 'first_batch_seconds',
                                                        'total_seconds')] for kind in ('start', 'resume')]))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--source-size', type=prepared_size.parse_size, default=(1280, 720),
                      help='frame size of the release, WIDTHxHEIGHT')
  parser.add_argument('--size', type=int, default=320, help='model input size')
  parser.add_argument('--threads', type=lambda text: [int(n) for n in text.split(',')], default=[1, 2],
                      help='numbers of reading threads')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--batches', type=int, default=30, help='batches per measurement')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--videos', type=int, default=12)
  parser.add_argument('--frames', type=int, default=12, help='frames per video')
  parser.add_argument('--delta', type=int, default=6)
  parser.add_argument('--work-dir', help='where the release, the store and the TFRecord file are made (default: a '
                      'temporary directory)')
  parser.add_argument('--json')
  args = parser.parse_args(argv)
  width, height = args.source_size
  options = input_pipeline.Preprocessing(height=args.size, width=args.size)
  load_before = os.getloadavg()
  with contextlib.ExitStack() as stack:
    work_dir = pathlib.Path(args.work_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix='lbdt_input_')))
    work_dir.mkdir(parents=True, exist_ok=True)
    release = prepared_size.synthetic_release(work_dir, width, height, args.videos, args.frames)
    directory = work_dir / f'store_{width}x{height}_{args.videos}x{args.frames}'
    source = prepared_size.prepare(release, directory, store.DEFAULT_MAX_DELTA).split(prepared_size.SPLIT)
    previous_file = work_dir / f'previous_{width}x{height}_{args.videos}x{args.frames}_delta{args.delta}.tfrecord'
    write_previous_layout(source, previous_file, args.delta)
    first = {kind: [first_batch(directory, options, delta=args.delta, batch_size=args.batch, resume=kind == 'resume')
                    for _ in range(args.repeats)] for kind in ('start', 'resume')}
    shuffle_buffer = min(PREVIOUS_SHUFFLE_BUFFER, len(source))
    rows = throughput(directory, previous_file, options, args, shuffle_buffer)
    frame_bytes_mean = source.summary['frames_bytes'] / source.summary['frames']
  result = {
      'machine': harness.machine(), 'source_size': [width, height],
      'rendered_at': list(prepared_size.rendered_size(width, height)), 'frame_bytes_mean': frame_bytes_mean,
      'input_size': args.size, 'batch': args.batch, 'batches': args.batches, 'repeats': args.repeats,
      'delta': args.delta, 'samples': len(source), 'previous_shuffle_buffer': shuffle_buffer,
      # Other work on a shared machine slows the pipelines down (CPU time per sample less than samples/s).
      'load_average': {'start': load_before[0], 'end': os.getloadavg()[0]}, 'rows': rows,
      'cores_per_accelerator': cores_per_accelerator(rows),
      'first_batch': {'threads': len(os.sched_getaffinity(0)),
                      **{kind: {key: spread([run[key] for run in runs]) for key in runs[0]} | {'runs': runs}
                         for kind, runs in first.items()}}}
  print_tables(result)
  harness.write_json(args.json, result)
  return result


if __name__ == '__main__':
  main()

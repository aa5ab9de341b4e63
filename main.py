"""lbdt-jax command line: flags -> config -> one library call.

  python main.py --config=configs/synthetic.py --workdir=workdir/synthetic          # train + evaluate (default)
  python main.py --config=configs/default.py:lbdt4 --mode=evaluate --workdir=runs/a2d_lbdt4
  python main.py --config=configs/default.py --mode=prepare --config.data.manual_dirs.a2d_sentences=/data/a2d \\
      --config.data.glove_path=/data/glove.840B.300d.zip
  python main.py --config=configs/default.py --mode=convert --checkpoint=a2d_lbdt4.ckpt --workdir=models/lbdt4

Multi-host: start the same command on every host with --coordinator=host0:1234 --num_processes=N --process_id=i
(or let JAX discover them on SLURM / Cloud TPU with --distributed).
"""

import os
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.realpath(__file__))
OUR_CODE = ('lbdt_jax', 'data_pipeline', 'configs', 'main.py')

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/default.py', 'Configuration file (configs/*.py[:options]).')
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results (not used by --mode=prepare).')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate', 'predict', 'export', 'prepare', 'convert'], 'What to do.')
flags.DEFINE_bool('rebuild_word_tables', False, '--mode=prepare: write the word tables again (e.g. after '
                  'setting --config.data.glove_path).')
flags.DEFINE_string('checkpoint', None, '--mode=convert: an official LBDT state dict or a torchvision ResNet '
                    '(.pth/.ckpt/.npz); written as a model directory to WORKDIR.')
flags.DEFINE_string('video', None, '--mode=predict: a video file or a folder of frames.')
flags.DEFINE_multi_string('sentence', None, '--mode=predict: a referring sentence (repeat for several).')
flags.DEFINE_string('output', None, '--mode=predict: output folder (default WORKDIR/predictions); '
                    '--mode=export: model directory (default WORKDIR/export).')
flags.DEFINE_string('model', None, '--mode=predict: a model directory (default: --config.init.checkpoint, else '
                    'WORKDIR/export).')
flags.DEFINE_integer('batch_size', 8, '--mode=predict: frames per call.')
flags.DEFINE_bool('attention', False, '--mode=predict: also draw the words\' attention maps (paper Fig. 6).')
flags.DEFINE_integer('attention_stage', 5, '--mode=predict --attention: encoder stage (4 or 5).')
flags.DEFINE_integer('attention_layer', 0, '--mode=predict --attention: LBDT layer within the stage.')
flags.DEFINE_list('attention_frames', [], '--mode=predict --attention: frame indices (default: frame δ).')
flags.DEFINE_string('glove_path', None, '--mode=predict: GloVe file to look up words a GloVe model lacks.')
flags.DEFINE_bool('serving', False, '--mode=predict: run the model directory\'s serving artefact (serving/, '
                  'written by --mode=export; jax.export, no model code) instead of the model code. No --attention.')
flags.DEFINE_bool('allow_unreadable_frames', False, '--mode=predict: skip the frames of a damaged video that '
                  'cannot be decoded (with a warning) instead of stopping with an error.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (auto-detected cluster).')
flags.DEFINE_string('coordinator', None, 'Multi-host: address:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:  # orbax logs every file they touch at INFO; --verbosity=0 shows it
    logging.set_verbosity(logging.WARNING)
  try:
    run(FLAGS.config)
  except Exception as error:  # pylint: disable=broad-except
    if not is_users_mistake(error):
      raise
    print(f'Error: {error}', file=sys.stderr, flush=True)
    sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (which reads the config file and applies --config.* overrides), with a mistake in them
  reported in one line and exit status 2."""
  try:
    remaining = FLAGS(argv)
    FLAGS.config.keys()  # the file is loaded lazily: a file that fails to load fails here, not later
    return remaining
  except (flags.Error, OSError, AttributeError, KeyError, TypeError, ValueError) as error:
    print(f'Error: {_flag_problem(error)}', file=sys.stderr, flush=True)
    sys.exit(2)


def _flag_problem(error: Exception) -> str:
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  if isinstance(error, (AttributeError, KeyError)):  # an override of a field the config does not have
    field = str(error).strip('"\'')
    given = [arg for arg in sys.argv if arg.startswith('--config.') and field in arg.split('=')[0].split('.')]
    return f'{" ".join(given) or field}: the config has no field {field!r} (fields: configs/default.py)'
  if lines and 'Failed loading config file' in lines[0]:
    return f'--config: cannot load {lines[-1]}'
  if 'Traceback' in str(error):  # an exception inside the config file's get_config: its last line says what
    return f'{lines[0]} {lines[-1]}'
  return lines[0] if lines else type(error).__name__


def is_users_mistake(error: Exception) -> bool:
  """Errors our code raises on purpose about its input (their messages name the problem); anything raised inside a
  library keeps its traceback."""
  if not isinstance(error, (ValueError, OSError, RuntimeError, TimeoutError)):
    return False
  frame = traceback.extract_tb(error.__traceback__)[-1]
  return os.path.realpath(frame.filename).startswith(tuple(os.path.join(ROOT, part) for part in OUR_CODE))


def run(config) -> None:
  """One library call per mode (imports per mode: prediction needs no TensorFlow)."""
  if (FLAGS.num_processes or FLAGS.process_id is not None) and not (FLAGS.coordinator or FLAGS.distributed):
    raise app.UsageError('--num_processes/--process_id need --coordinator=host:port (or --distributed)')
  if FLAGS.distributed or FLAGS.coordinator:
    from lbdt_jax import sharding  # pylint: disable=import-outside-toplevel
    sharding.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  if FLAGS.mode == 'prepare':
    from data_pipeline import prepare  # pylint: disable=import-outside-toplevel
    print(prepare.describe(prepare.prepare(config, FLAGS.rebuild_word_tables)))
    return
  if FLAGS.mode == 'predict':
    from lbdt_jax import paths, predict  # pylint: disable=import-outside-toplevel
    workdir = FLAGS.workdir and paths.path(FLAGS.workdir)
    model_dir = FLAGS.model or config.init.checkpoint or (workdir and workdir / 'export')
    output = FLAGS.output or (workdir and workdir / 'predictions')
    if not (FLAGS.video and FLAGS.sentence and model_dir and output):
      raise app.UsageError('--mode=predict needs --video, at least one --sentence, and --model and --output '
                           '(or --workdir of a trained run)')
    predict.predict(model_dir, FLAGS.video, FLAGS.sentence, output, batch_size=FLAGS.batch_size,
                    attention=FLAGS.attention, attention_stage=FLAGS.attention_stage,
                    attention_layer=FLAGS.attention_layer,
                    attention_frames=tuple(int(f) for f in FLAGS.attention_frames), glove_path=FLAGS.glove_path,
                    allow_unreadable_frames=FLAGS.allow_unreadable_frames, serving=FLAGS.serving)
    return
  if not FLAGS.workdir:
    raise app.UsageError(f'--mode={FLAGS.mode} needs --workdir')
  if FLAGS.mode == 'train':
    from lbdt_jax import train  # pylint: disable=import-outside-toplevel
    train.train_and_evaluate(config, FLAGS.workdir)
  elif FLAGS.mode == 'evaluate':
    from lbdt_jax import evaluate  # pylint: disable=import-outside-toplevel
    evaluate.evaluate(config, FLAGS.workdir)
  elif FLAGS.mode == 'export':
    from lbdt_jax import export  # pylint: disable=import-outside-toplevel
    export.export_model(config, FLAGS.workdir, FLAGS.output)
  elif FLAGS.mode == 'convert':
    if not FLAGS.checkpoint:
      raise app.UsageError('--mode=convert needs --checkpoint')
    from lbdt_jax import convert  # pylint: disable=import-outside-toplevel
    convert.convert_checkpoint(FLAGS.checkpoint, FLAGS.workdir, config)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)

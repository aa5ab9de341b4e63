"""lbdt-jax command line: flags -> config -> one library call.

  python main.py --config=configs/synthetic.py --workdir=workdir/synthetic          # train + evaluate (default)
  python main.py --config=configs/default.py:lbdt4 --mode=evaluate --workdir=runs/a2d_lbdt4
  python main.py --config=configs/default.py --mode=prepare --config.data.manual_dirs.a2d_sentences=/data/a2d \\
      --config.data.glove_path=/data/glove.840B.300d.zip
  python main.py --config=configs/default.py --mode=convert --checkpoint=a2d_lbdt4.ckpt --workdir=models/lbdt4

Multi-host: start the same command on every host with --coordinator=host0:1234 --num_processes=N --process_id=i
(or let JAX discover them on SLURM / Cloud TPU with --distributed).
"""

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/default.py', 'Configuration file (configs/*.py[:options]).')
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results (not used by --mode=prepare).')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate', 'prepare', 'convert'], 'What to do.')
flags.DEFINE_bool('rebuild_word_tables', False, '--mode=prepare: write the word tables again (e.g. after '
                  'setting --config.data.glove_path).')
flags.DEFINE_string('checkpoint', None, '--mode=convert: an official LBDT state dict or a torchvision ResNet '
                    '(.pth/.ckpt/.npz); written as a model directory to WORKDIR.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (auto-detected cluster).')
flags.DEFINE_string('coordinator', None, 'Multi-host: address:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:  # orbax and tfds log every file they touch at INFO; --verbosity=0 shows it
    logging.set_verbosity(logging.WARNING)
  # Imported here so that --help stays fast and multi-host start-up happens before anything touches devices.
  from lbdt_jax import sharding  # pylint: disable=import-outside-toplevel
  if FLAGS.distributed or FLAGS.coordinator:
    sharding.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  from data_pipeline import prepare  # pylint: disable=import-outside-toplevel
  from lbdt_jax import convert, evaluate, train  # pylint: disable=import-outside-toplevel
  if FLAGS.mode == 'prepare':
    print(prepare.describe(prepare.prepare(FLAGS.config, FLAGS.rebuild_word_tables)))
    return
  if not FLAGS.workdir:
    raise app.UsageError(f'--mode={FLAGS.mode} needs --workdir')
  if FLAGS.mode == 'train':
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == 'evaluate':
    evaluate.evaluate(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == 'convert':
    if not FLAGS.checkpoint:
      raise app.UsageError('--mode=convert needs --checkpoint')
    convert.convert_checkpoint(FLAGS.checkpoint, FLAGS.workdir, FLAGS.config)


if __name__ == '__main__':
  app.run(main)

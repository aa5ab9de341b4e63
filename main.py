"""lbdt-jax command line: flags -> config -> one library call.

  python main.py --config=configs/synthetic.py --workdir=workdir/demo            # --mode=demo (default)
  python main.py --config=configs/default.py --mode=convert --checkpoint=a2d_lbdt4.ckpt --workdir=models/lbdt4
  python main.py --config=configs/default.py --mode=prepare --config.data.manual_dirs.a2d_sentences=/data/a2d \
      --config.data.glove_path=/data/glove.840B.300d.zip
"""

from absl import app, flags
from ml_collections import config_flags

from data_pipeline import prepare
from lbdt_jax import convert, demo

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/default.py', 'Configuration file (configs/*.py[:arg]).')
flags.DEFINE_string('workdir', None, 'Directory for outputs (not used by --mode=prepare).')
flags.DEFINE_enum('mode', 'demo', ['demo', 'convert', 'prepare'], 'What to do.')
flags.DEFINE_bool('rebuild_word_tables', False, '--mode=prepare: write the word tables again (e.g. after '
                  'setting --config.data.glove_path).')
flags.DEFINE_string('checkpoint', None, '--mode=convert: an official LBDT state dict or a torchvision ResNet '
                    '(.pth/.ckpt/.npz); written as an orbax checkpoint to WORKDIR.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.mode == 'prepare':
    print(prepare.describe(prepare.prepare(FLAGS.config, FLAGS.rebuild_word_tables)))
    return
  if not FLAGS.workdir:
    raise app.UsageError(f'--mode={FLAGS.mode} needs --workdir')
  if FLAGS.mode == 'demo':
    demo.run_demo(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == 'convert':
    if not FLAGS.checkpoint:
      raise app.UsageError('--mode=convert needs --checkpoint')
    convert.convert_checkpoint(FLAGS.checkpoint, FLAGS.workdir, FLAGS.config)


if __name__ == '__main__':
  app.run(main)

"""J-HMDB Sentences (Tab. 2): evaluation of an A2D Sentences model, no training.

  python main.py --mode=evaluate --config=configs/jhmdb_sentences.py:lbdt4 --workdir=runs/jhmdb \
      --config.init.checkpoint=runs/a2d_lbdt4/export --config.data.manual_dirs.jhmdb_sentences=/data/jhmdb
"""

from configs import default


def get_config(options: str = 'lbdt4'):
  config = default.get_config('')
  config.data.train = ''
  config.data.evaluate = ('jhmdb_sentences:test',)
  default.apply_options(config, options)  # last: what the options set stays set
  return config

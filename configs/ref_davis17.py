"""Ref-DAVIS17 (Tab. 4): the Refer-YouTube-VOS model fine-tuned on DAVIS train for one epoch at lr 1e-5, then J&F on
val over the four expression sets.

  python main.py --config=configs/ref_davis17.py --workdir=runs/davis --config.init.checkpoint=runs/ytvos/export \
      --config.data.manual_dirs.ref_davis17=/data/ref-davis
"""

from configs import default


def get_config(options: str = 'lbdt4'):
  config = default.get_config('')
  config.data.train = 'ref_davis17:train'
  config.data.evaluate = ('ref_davis17:validation',)
  config.train.num_epochs = 1
  config.optimizer.update(learning_rate=1e-5, decay_epochs=())
  default.apply_options(config, options)  # last: what the options set stays set
  return config

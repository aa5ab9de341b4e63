"""Refer-YouTube-VOS, LBDT-4 (Tab. 3): trained on train, predictions on valid zipped for the codalab server.

  python main.py --config=configs/ref_youtube_vos.py --workdir=runs/ytvos \
      --config.data.manual_dirs.ref_youtube_vos=/data/ref-youtube-vos --config.init.imagenet=resnet50.pth
"""

from configs import default


def get_config(options: str = 'lbdt4'):
  config = default.get_config('')
  config.data.train = 'ref_youtube_vos:train'
  config.data.evaluate = ('ref_youtube_vos:validation',)
  default.apply_options(config, options)  # last: what the options set stays set
  return config

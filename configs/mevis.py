"""MeViS, LBDT-4: trained on train, J&F on valid_u, predictions on valid zipped for the evaluation server.

  python main.py --config=configs/mevis.py --workdir=runs/mevis \
      --config.data.manual_dirs.mevis=/data/mevis --config.init.imagenet=resnet50.pth

The recipe is the paper's Refer-YouTube-VOS one (configs/ref_youtube_vos.py: AdamW 1e-4, batch 8, 15 epochs, decays
after epochs 10, 12 and 14), not tuned for MeViS. A sample is one frame of one expression, every frame of the video
(data_pipeline.readers.MevisReader), so an epoch covers every frame once per expression. LBDT is a per-frame model:
each frame is segmented from itself, the frame δ earlier and the sentence, with no memory of the other frames.
"""

from configs import default


def get_config(options: str = 'lbdt4'):
  config = default.get_config('')
  config.data.train = 'mevis:train'
  config.data.evaluate = ('mevis:valid_u', 'mevis:valid')
  default.apply_options(config, options)  # last: what the options set stays set
  return config

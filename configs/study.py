"""The language-bridge study (README "Does the language bridge help?"): a small LBDT-1 on the synthetic set.

`python -m experiments.bridge_study` trains every variant with this config and several seeds; one run is
`python main.py --config=configs/study.py:<options> --workdir=DIR --config.seed=S`, with the options of
configs/default.py (`direct`, `t2s_only`, `no_denoiser`, ...). Sized for 2 CPU cores: ResNet-18 at width 16,
64x64 frames, 3 epochs (1,902 steps), evaluated on the synthetic test and compositional splits.
"""

from configs import default, synthetic


def get_config(options: str = 'lbdt1'):
  config = synthetic.get_config('')
  config.input_height = config.input_width = 64
  config.data = default.data_config(
      train='synthetic_rvos:train', evaluate=('synthetic_rvos:test', 'synthetic_rvos:test_compositional'))
  config.data.synthetic = {'seed': 0, 'height': 64, 'width': 64, 'num_frames': 12, 'num_videos': {
      'train': 240, 'validation': 24, 'test': 48, 'test_compositional': 48}}
  config.data.num_threads = 1  # the study runs one training per core
  config.train.update(batch_size=8, num_epochs=3, log_every_steps=100, checkpoint_every_steps=2000)
  config.optimizer.update(learning_rate=1e-3, decay_epochs=(2, 2.5))
  config.eval.update(batch_size=16, pictures=0, attention_maps=False)
  default.apply_options(config, options)  # last: what the options set stays set
  return config

"""A small LBDT on the built-in synthetic data: runs in about a minute on 2 CPU cores (the quick start)."""

from configs import default


def get_config():
  config = default.get_config('lbdt1')
  config.model.update(resnet_depth=18, resnet_width=16, model_dim=64, num_heads=4, ffn_dim=64,
                      decoder_dim=32)
  config.input_height = config.input_width = 96
  config.max_words = 8
  config.data = default.data_config(
      train='synthetic_rvos:train',
      evaluate=('synthetic_rvos:validation', 'synthetic_rvos:test', 'synthetic_rvos:test_compositional'))
  config.data.synthetic = {'seed': 0, 'height': 96, 'width': 96, 'num_frames': 12}
  config.demo.update(batch_size=4, steps=60, learning_rate=2e-3)
  return config

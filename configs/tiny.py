"""The smallest LBDT that exercises every part of the model, on a tiny synthetic set: for tests (seconds)."""

from configs import default


def get_config(options: str = 'lbdt1'):
  config = default.get_config('')
  config.model.update(resnet_depth=18, resnet_width=8, resnet_blocks=(1, 1, 1, 1), model_dim=32,
                      num_heads=4, ffn_dim=32, decoder_dim=16)
  config.model.word_dim = 16
  config.input_height = config.input_width = 64
  config.max_words = 6
  config.data = default.data_config(train='synthetic_rvos:train', evaluate=('synthetic_rvos:validation',))
  config.data.synthetic = {'seed': 0, 'height': 64, 'width': 64, 'num_frames': 8, 'num_videos': {
      'train': 6, 'validation': 2, 'test': 2, 'test_compositional': 2}}
  config.train.update(batch_size=4, num_steps=6, log_every_steps=1, checkpoint_every_steps=2, keep_checkpoints=10)
  config.optimizer.update(learning_rate=1e-3, decay_epochs=(2,))
  config.eval.batch_size = 4
  default.apply_options(config, options)  # last: what the options set stays set
  return config

"""The main job: a small LBDT-1 trained on the built-in synthetic set on CPU (about 15 minutes on 2 cores).

ResNet-18 encoders at width 16, 96x96 input, learned word embeddings (no GloVe needed); evaluated per cue kind
(appearance / motion / both) on the validation, test and compositional splits, with pictures of its predictions.
"""

from configs import default


def get_config(options: str = 'lbdt1'):
  config = default.get_config('')
  config.model.update(resnet_depth=18, resnet_width=16, model_dim=64, num_heads=4, ffn_dim=64, decoder_dim=32)
  config.input_height = config.input_width = 96
  config.max_words = 8
  config.data = default.data_config(
      train='synthetic_rvos:train',
      evaluate=('synthetic_rvos:validation', 'synthetic_rvos:test', 'synthetic_rvos:test_compositional'))
  config.data.synthetic = {'seed': 0, 'height': 96, 'width': 96, 'num_frames': 12, 'num_videos': {
      'train': 240, 'validation': 24, 'test': 24, 'test_compositional': 24}}
  config.train.update(batch_size=8, num_epochs=10, log_every_steps=50, checkpoint_every_steps=500)
  config.optimizer.update(learning_rate=1e-3, decay_epochs=(7, 9))
  config.eval.update(batch_size=16, pictures=8, attention_maps=True)
  default.apply_options(config, options)  # last: what the options set stays set
  return config

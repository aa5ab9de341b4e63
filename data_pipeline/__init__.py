"""Data for lbdt-jax: TFDS builders (registered on import), tokenizer, GloVe tables, the tf.data pipeline.

Importing this package registers `a2d_sentences`, `jhmdb_sentences`, `ref_youtube_vos`, `ref_davis17` and
`synthetic_rvos` with tensorflow-datasets. TensorFlow is kept off GPUs: they belong to JAX.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow start-up chatter off, warnings kept

import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], 'GPU')

from data_pipeline import builders  # noqa: E402  (registers the builders)

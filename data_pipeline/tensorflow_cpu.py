"""TensorFlow for the input side only: imported through here so that it stays off GPUs, which belong to JAX."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # start-up chatter off, warnings kept

import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], 'GPU')

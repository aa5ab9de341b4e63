"""The ImageNet normalisation of the model's input frames, defined once for every side that needs it.

numpy only, so that prediction and the pictures (`lbdt_jax.predict`, `lbdt_jax.visualize`) use the same numbers as
the tf.data input pipeline (`data_pipeline.input_pipeline`) without importing TensorFlow.
"""

import numpy as np


def _constant(values) -> np.ndarray:
  array = np.array(values, np.float32)
  array.setflags(write=False)  # shared by every importer: no one may change it in place
  return array


# Per RGB channel, for frames scaled to 0..1: normalised = (frame / 255 - IMAGENET_MEAN) / IMAGENET_STD.
IMAGENET_MEAN = _constant([0.485, 0.456, 0.406])
IMAGENET_STD = _constant([0.229, 0.224, 0.225])

"""Data for lbdt-jax: readers of the benchmarks' releases, the frame store, tokenizer, word tables, the loader.

Importing the package loads nothing heavy: `data_pipeline.glove` and `data_pipeline.tokenizer` need only numpy;
the modules that use TensorFlow import it through `data_pipeline.tensorflow_cpu`, which keeps it off GPUs.
"""

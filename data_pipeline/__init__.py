"""Data for lbdt-jax: readers of the benchmarks' releases, TFDS builders, tokenizer, word tables, the input pipeline.

Importing the package loads nothing heavy: `data_pipeline.glove` and `data_pipeline.tokenizer` need only numpy;
the modules that use TensorFlow import it through `data_pipeline.tensorflow_cpu`, which keeps it off GPUs.
`data_pipeline.builders` registers `a2d_sentences`, `jhmdb_sentences`, `ref_youtube_vos`, `ref_davis17` and
`synthetic_rvos` with tensorflow-datasets.
"""

"""lbdt-jax: Language-Bridged Duplex Transfer (CVPR 2022) for referring video object segmentation."""

__version__ = '0.1.0'

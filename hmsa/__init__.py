"""hmsa: a reproducible workflow for Hierarchical Multi-Scale Attention for Semantic Segmentation
(Tao, Sapra, Catanzaro, 2020)."""

__version__ = "0.1.0"

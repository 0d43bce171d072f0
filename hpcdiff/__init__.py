"""hpcdiff: distributed training and sampling of diffusion models on large scientific grids."""

__version__ = "0.1.0"

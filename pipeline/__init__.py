"""LayerDiffuse XL batch generator: prompt tables in, transparent RGBA PNGs and a manifest out."""

__version__ = "0.1.0"

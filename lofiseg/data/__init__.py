"""Data sets: the on-disk format, the synthetic default, sources, noise models."""

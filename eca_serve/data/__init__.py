"""Training data that needs no download: the seeded procedural shapes dataset."""

from eca_serve.data import shapes
from eca_serve.data.shapes import *  # noqa: F403  (the public names are shapes.__all__)

__all__ = list(shapes.__all__)

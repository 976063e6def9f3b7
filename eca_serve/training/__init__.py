"""Training loops for classifiers and detectors (``eca-serve train classify|detect``)."""

from eca_serve.training.loop import TrainConfig

__all__ = ["TrainConfig"]

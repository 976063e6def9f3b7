"""Training data that needs no download: the seeded procedural shapes dataset."""

from eca_serve.data.shapes import (
    IMAGEFOLDER_CLASSES,
    MIN_VISIBLE_FRACTION,
    MIN_VISIBLE_PIXELS,
    NUM_CLASSES,
    SHAPE_CLASSES,
    Scene,
    ShapesClassification,
    ShapesDetection,
    coco_categories,
    generate,
    image_to_tensor,
    make_classification_sample,
    make_scene,
    sample_rng,
    write_coco,
    write_imagefolder,
)

__all__ = [
    "IMAGEFOLDER_CLASSES",
    "MIN_VISIBLE_FRACTION",
    "MIN_VISIBLE_PIXELS",
    "NUM_CLASSES",
    "SHAPE_CLASSES",
    "Scene",
    "ShapesClassification",
    "ShapesDetection",
    "coco_categories",
    "generate",
    "image_to_tensor",
    "make_classification_sample",
    "make_scene",
    "sample_rng",
    "write_coco",
    "write_imagefolder",
]

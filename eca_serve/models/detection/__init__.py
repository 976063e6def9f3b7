"""ECA-ResNet-FPN detectors on torchvision's Faster R-CNN, Mask R-CNN and RetinaNet.

Importing this package registers ``{fasterrcnn,maskrcnn,retinanet}_eca_resnet{18,34,50,101}_fpn``.
"""

from eca_serve.models.detection.backbone import EcaResNetFPNBackbone, eca_resnet_fpn_backbone
from eca_serve.models.detection.builders import (
    build_detector,
    default_kernel_sizes,
    detection_categories,
    load_backbone_from_classifier,
)
from eca_serve.models.detection.models import EcaFasterRCNN, EcaMaskRCNN, EcaRetinaNet

__all__ = [
    "EcaFasterRCNN",
    "EcaMaskRCNN",
    "EcaResNetFPNBackbone",
    "EcaRetinaNet",
    "build_detector",
    "default_kernel_sizes",
    "detection_categories",
    "eca_resnet_fpn_backbone",
    "load_backbone_from_classifier",
]

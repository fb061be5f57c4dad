"""ImageNet's preprocessing conventions, shared by training and the ONNX import (which runs
without torch): the per-channel mean and std that torchvision's ImageNet weights normalize
with, and the shorter side resized to 256 for a 224 crop."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_RATIO = 256 / 224

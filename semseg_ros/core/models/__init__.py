"""Segmentation models: one interface, backends created by name."""

from semseg_ros.core.models.base import ModelError, Preprocess, SegmentationModel
from semseg_ros.core.models.loader import load_model
from semseg_ros.core.models.registry import available_backends, create_model

__all__ = [
    'ModelError',
    'Preprocess',
    'SegmentationModel',
    'available_backends',
    'create_model',
    'load_model',
]

"""Data: the real benchmark loaders, preprocessing, caption handling and tiny mode's synthetic world."""
from cirtutor.data.base import RetrievalGroup, collate
from cirtutor.data.cirr import CIRR
from cirtutor.data.fashioniq import CATEGORIES, TRAIN_ORDER, FashionIQ
from cirtutor.data.preprocess import ImageTransform, load_image, target_pad

__all__ = ["CIRR", "FashionIQ", "CATEGORIES", "TRAIN_ORDER", "ImageTransform", "RetrievalGroup", "collate", "load_image", "target_pad"]

"""Dataset readers, the embedded synthetic dataset and transforms.

Every reader returns ``(image, target)`` items as ``docs/conventions.md`` defines them and
has ``classes`` and ``category_ids``. See ``docs/data.md`` for formats and the bad-data
policy.
"""

from .build import DATASETS, build_dataset
from .coco import COCODataset
from .common import BadDataWarning, Batch, ItemDataset, collate, multi_hot
from .folder import FolderDataset
from .glyphs import GLYPH_CLASSES, GlyphConfig, GlyphScenes, generate_glyph_scene
from .images import DataError, load_image, load_index_png, to_image_tensor, to_uint8_image
from .shapes import SHAPE_CLASSES, SceneConfig, ShapeScenes, generate_scene
from .transforms import IMAGENET_MEAN, IMAGENET_STD, InferenceTransform, TrainTransform, denormalize
from .voc import VOC_CLASSES, VOCDataset

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SHAPE_CLASSES",
    "VOC_CLASSES",
    "BadDataWarning",
    "Batch",
    "COCODataset",
    "DataError",
    "FolderDataset",
    "GLYPH_CLASSES",
    "GlyphConfig",
    "GlyphScenes",
    "InferenceTransform",
    "ItemDataset",
    "SceneConfig",
    "ShapeScenes",
    "TrainTransform",
    "VOCDataset",
    "build_dataset",
    "collate",
    "denormalize",
    "generate_glyph_scene",
    "generate_scene",
    "load_image",
    "load_index_png",
    "multi_hot",
    "to_image_tensor",
    "to_uint8_image",
]

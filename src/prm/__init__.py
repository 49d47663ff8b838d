"""prm: weakly supervised instance segmentation with Peak Response Maps.

Zhou, Zhu, Ye, Qiu, Jiao. *Weakly Supervised Instance Segmentation using Class Peak
Response*. CVPR 2018.

The pipeline, one module per step::

    prm.peaks       find_peaks, peak_stimulation            (docs/method.md §2)
    prm.model       build_model, PeakResponseNet            (§1)
    prm.classifier  from_classifier, timm backbones (pretrained classifiers as PRM nets)
    prm.backprop    peak_response_maps, peak_backprop_rule  (§4)
    prm.proposals   segment proposals: generator, readers   (§5 inputs)
    prm.retrieval   retrieve_instances, RetrievalConfig     (§5)
    prm.predictor   Predictor: images -> scored instance masks
    prm.pretrained  zero-training PRM on real photos (ImageNet classifier + class groups)
    prm.evaluation  mAP^r, ABO, COCO AP, ...                (§6)
"""

from prm.backprop import peak_backprop_rule, peak_response_maps
from prm.classifier import from_classifier
from prm.model import PeakResponseNet, build_model
from prm.peaks import find_peaks, peak_stimulation
from prm.predictor import Predictor
from prm.retrieval import RetrievalConfig, retrieve_instances

__version__ = "0.1.0"

__all__ = [
    "PeakResponseNet",
    "Predictor",
    "RetrievalConfig",
    "build_model",
    "find_peaks",
    "from_classifier",
    "peak_backprop_rule",
    "peak_response_maps",
    "peak_stimulation",
    "retrieve_instances",
]

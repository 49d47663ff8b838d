"""Learning regression: from image-level labels only, the small network learns a small
ShapeScenes split, and its peak response maps beat the CAM baseline's class maps.

Both networks train with the library's recipe (``train``, the ``shapes`` preset) on 400
images for 6 epochs and are evaluated on 40 test images with selective-search proposals.
Thresholds come from two measured runs (training seeds 0 and 1, same test images), with
headroom for other platforms' arithmetic:

    seed | PRM class. mAP | PRM quality | CAM quality | PRM mAP^r@0.5 | CAM mAP^r@0.5
      0  |      0.707     |    0.419    |    0.126    |     0.252     |     0.007
      1  |      0.625     |    0.473    |    0.138    |     0.159     |     0.016

(CAM's classification mAP: 0.565 and 0.575.) About 12 minutes on a 2-core machine under
a load of 15, a fraction of that on an idle one.
"""

import pytest
import torch

from prm.data import ShapeScenes
from prm.engine import load_config, train
from prm.engine.inference import predict_dataset
from prm.predictor import Predictor
from prm.proposals import SelectiveSearch
from prm.retrieval import RetrievalConfig

pytestmark = pytest.mark.slow

METRICS = ("classification/mAP", "prm_quality/mean", "instance/mAP_r@0.5")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    base = load_config(
        "shapes", root=str(root / "data"), num_train_images=400, val_split=None, epochs=6
    )
    test_set = ShapeScenes("test", 40, seed=0, cache_dir=root / "data")
    generator, proposals = SelectiveSearch(), {}

    def source(image_id, image):  # computed once, shared by both networks
        if image_id not in proposals:
            proposals[image_id] = generator(image)
        return proposals[image_id]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    metrics = {}
    try:
        for name, stimulation in (("prm", True), ("cam", False)):
            config = base.replace(out=str(root / name), peak_stimulation=stimulation)
            checkpoint = train(config, progress=False)
            # 128 px images: the demo's tuned penalty, not the authors' 1e-5 for 448 px.
            predictor = Predictor.from_checkpoint(checkpoint, retrieval=RetrievalConfig(beta=1e-3))
            summary = predict_dataset(
                predictor, test_set, proposals=source, metrics=["instance", "classification",
                "prm_quality"], progress=False
            )  # fmt: skip
            metrics[name] = {key: summary.metrics[key] for key in METRICS}
    finally:
        torch.set_num_threads(threads)
    print(metrics)
    return metrics


def test_the_classifier_learns_from_image_labels(measured):
    assert measured["prm"]["classification/mAP"] >= 0.55


def test_peak_response_maps_fall_on_objects_more_than_class_maps(measured):
    prm, cam = measured["prm"]["prm_quality/mean"], measured["cam"]["prm_quality/mean"]
    assert prm >= 0.3
    assert prm >= cam + 0.15


def test_prm_instances_beat_cam_instances(measured):
    prm, cam = measured["prm"]["instance/mAP_r@0.5"], measured["cam"]["instance/mAP_r@0.5"]
    assert prm >= 0.08
    assert prm >= cam + 0.05

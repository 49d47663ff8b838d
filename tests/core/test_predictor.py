"""The one-call predictor: images + proposals -> instances at the original resolution."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from prm.backprop import PeakSelection
from prm.data import to_image_tensor, to_uint8_image
from prm.masks import masks_to_boxes
from prm.model import PeakResponseNet, build_model
from prm.predictor import Predictor, crm_to_image_coords
from prm.proposals import CompactProposals, SelectiveSearch


def test_crm_cells_map_to_receptive_field_centres():
    # 14 cells over 448 px: cell i is centred at (i + 0.5) * 32.
    yx = torch.tensor([[0, 0], [13, 6]])
    xy = crm_to_image_coords(yx, (14, 14), 1, (448, 448))
    assert xy.tolist() == [[16.0, 16.0], [6.5 * 32, 13.5 * 32]]
    # Sub-pixel factor 8 (align_corners=True): 112 cells; cell 111 is base cell 13.
    xy = crm_to_image_coords(torch.tensor([[111, 0]]), (112, 112), 8, (448, 224))
    assert xy.tolist() == [[8.0, 432.0]]


def test_image_inputs_are_converted():
    array = np.random.default_rng(0).integers(0, 255, (10, 12, 3), dtype=np.uint8)
    from_pil = to_image_tensor(Image.fromarray(array))
    assert from_pil.shape == (3, 10, 12) and from_pil.max() <= 1
    assert torch.equal(from_pil, to_image_tensor(array))
    assert torch.equal(from_pil, to_image_tensor(torch.from_numpy(array).permute(2, 0, 1)))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        to_image_tensor(torch.zeros(4, 10, 12))
    with pytest.raises(ValueError, match="NaN"):
        to_image_tensor(torch.full((3, 2, 2), float("nan")))


def make_predictor(**kw):
    torch.manual_seed(0)
    model = build_model("small", 4, class_names=list("abcd"))
    return Predictor(model, input_size=64, peak_selection=PeakSelection(-1e9), **kw)


def blobs(count, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(count, h, w, dtype=torch.bool)
    for i in range(count):
        y0, x0 = (
            torch.randint(0, h - 8, (1,), generator=g).item(),
            torch.randint(0, w - 8, (1,), generator=g).item(),
        )
        masks[i, y0 : y0 + 4 + i % 9, x0 : x0 + 5 + i % 7] = True
    return masks


def test_instances_at_original_resolution():
    predictor = make_predictor()
    images = [torch.randint(0, 255, (3, 50, 70), dtype=torch.uint8), torch.rand(3, 90, 40)]
    proposals = [blobs(30, 50, 70, 0), blobs(30, 90, 40, 1)]
    outputs = predictor(images, proposals)
    for out, image, props in zip(outputs, images, proposals):
        n, (h, w) = len(out["masks"]), image.shape[1:]
        assert n > 0
        assert out["masks"].shape == (n, h, w) and out["masks"].dtype == torch.bool
        assert out["prms"].shape == (n, h, w)
        assert torch.allclose(out["prms"].flatten(1).sum(1), torch.ones(n))
        assert out["boxes"].shape == (n, 4) and out["labels"].shape == (n,)
        assert torch.all(out["scores"][:-1] >= out["scores"][1:])  # sorted
        assert torch.equal(out["scores"], out["peak_values"])  # the default score
        assert ((out["peaks"] >= 0) & (out["peaks"] <= torch.tensor([w, h]))).all()
        assert out["class_scores"].shape == (4,) and out["class_peaks"].shape == (4, 2)
        for mask in out["masks"]:  # every mask is one of the given proposals, untouched
            assert (props == mask).flatten(1).all(1).any()


def test_score_choice_and_dropping_prms():
    images, proposals = [torch.rand(3, 50, 70)], [blobs(30, 50, 70, 0)]
    by_retrieval = make_predictor(score="retrieval", keep_prms=False)(images, proposals)[0]
    assert torch.equal(by_retrieval["scores"], by_retrieval["retrieval_scores"])
    assert "prms" not in by_retrieval
    by_class = make_predictor(score="class")(images, proposals)[0]
    assert torch.equal(by_class["scores"], by_class["class_scores"][by_class["labels"]])
    with pytest.raises(ValueError, match="score must be"):
        make_predictor(score="iou")


def test_proposal_fn_is_used_when_no_proposals_are_given():
    calls = []

    def proposal_fn(image):
        calls.append(image.dtype)
        return blobs(20, *image.shape[1:], seed=3)

    out = make_predictor(proposal_fn=proposal_fn)([torch.rand(3, 40, 40)])
    assert calls == [torch.uint8] and len(out[0]["masks"]) > 0


def test_compact_proposals_predict_as_dense_ones():
    images = [torch.rand(3, 50, 70)]
    dense = blobs(30, 50, 70, 0)
    compact = CompactProposals.from_masks(dense)
    predictor = make_predictor()
    expected = predictor(images, [dense])[0]
    assert len(expected["masks"]) > 0
    for got in (
        predictor(images, [compact])[0],
        make_predictor(proposal_fn=lambda image: compact)(images)[0],
    ):
        for key in ("masks", "labels", "scores", "boxes", "peaks", "prms"):
            assert torch.equal(got[key], expected[key]), key
    assert torch.equal(expected["boxes"], masks_to_boxes(expected["masks"]))


def test_a_bare_predictor_uses_selective_search():
    torch.manual_seed(0)
    model = build_model("small", 2, input_size=48)
    predictor = Predictor(model)  # no proposals, no settings: the documented defaults
    assert isinstance(predictor.proposal_fn, SelectiveSearch)
    assert predictor.input_size == (48, 48) and predictor.response == "prm"
    image = torch.zeros(3, 40, 56)
    image[:, 10:25, 20:40] = 1.0
    out = predictor([image])[0]
    expected = SelectiveSearch()(to_uint8_image(image))
    for mask in out["masks"]:  # every instance is one of selective search's proposals
        assert (expected == mask).flatten(1).all(1).any()


def test_bad_proposals():
    predictor = make_predictor()
    image = torch.rand(3, 50, 70)
    with pytest.raises(
        ValueError, match=r"image 0: proposals are \(50, 71\), the image is \(50, 70\)"
    ):
        predictor([image], [blobs(5, 50, 71, 0)])
    with pytest.raises(ValueError, match="2 proposal sets for 1 images"):
        predictor([image], [blobs(5, 50, 70, 0)] * 2)


def test_no_peaks_above_threshold_is_an_empty_result():
    torch.manual_seed(0)
    model = build_model("small", 4)
    out = Predictor(model, input_size=64, peak_selection=PeakSelection(1e9))(
        [torch.rand(3, 50, 70)], [blobs(5, 50, 70, 0)]
    )[0]
    assert out["masks"].shape == (0, 50, 70) and out["scores"].shape == (0,)
    assert out["class_scores"].shape == (4,)


def test_cam_baseline_uses_each_class_map_for_all_its_peaks():
    images, proposals = [torch.rand(3, 50, 70)], [blobs(30, 50, 70, 0)]
    predictor = make_predictor(response="crm")
    response, _ = predictor.respond(images[0], proposals[0])
    maps = response["prms"]
    assert len(maps) > 1
    for c in response["labels"].unique():
        same = maps[response["labels"] == c]
        assert torch.equal(same, same[:1].expand_as(same))  # one map per class
    # Normalised to 1, or all zero for a class whose map is negative everywhere.
    sums = maps.flatten(1).sum(1)
    assert torch.all(((sums - 1).abs() < 1e-5) | (sums == 0)) and (sums > 0).any()
    out = predictor(images, proposals)[0]
    assert len(out["masks"]) >= 1
    none = Predictor(
        predictor.model, input_size=64, response="crm", peak_selection=PeakSelection(1e9)
    )
    assert len(none(images, proposals)[0]["masks"]) == 0  # no peak: empty, not an error


def test_proposal_free_fallback_makes_masks_from_prms():
    out = make_predictor(proposal_fn="prm")([torch.rand(3, 50, 70)])[0]
    assert len(out["masks"]) > 0 and out["masks"].shape[1:] == (50, 70)
    with pytest.raises(ValueError, match="proposal_fn must be"):
        make_predictor(proposal_fn="mcg")


def test_planted_object_in_a_non_square_image_with_sub_pixel_peaks():
    # A network that sees brightness: a stride-4 average of the three channels, one class
    # (no normalisation: the model says so, and the predictor follows it).
    backbone = nn.Conv2d(3, 1, kernel_size=4, stride=4, bias=False)
    model = PeakResponseNet(
        backbone, 1, in_channels=1, sub_pixel_factor=4, mean=(0, 0, 0), std=(1, 1, 1)
    )
    with torch.no_grad():
        backbone.weight.fill_(1 / 48)
        model.classifier.weight.fill_(1.0)
        model.classifier.bias.fill_(0.0)
    # A 60 x 100 image, dark, with one bright blob centred at (x, y) = (70, 38): a cone
    # 9 px in radius, so the response has a single top where the blob is brightest.
    h, w, cx, cy, radius = 60, 100, 70, 38, 9
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    distance = ((xs - cx) ** 2 + (ys - cy) ** 2).sqrt()
    image = (1 - distance / radius).clamp(min=0).expand(3, h, w).clone()
    blob = distance < radius
    # Candidates: a box around the blob, a box elsewhere, the blob, a wider disc. (A
    # proposal cutting through the blob would win on the boundary term, rightly.)
    around = torch.zeros(h, w, dtype=torch.bool)
    around[20:56, 50:90] = True
    elsewhere = torch.zeros(h, w, dtype=torch.bool)
    elsewhere[5:25, 5:35] = True
    proposals = torch.stack([around, elsewhere, blob, distance < 14])

    predictor = Predictor(model, input_size=(48, 48), peak_selection=PeakSelection(0.0, 0.0))
    out = predictor([image], [proposals])[0]
    assert len(out["masks"]) == 1  # one peak above 0: the blob's
    assert torch.equal(out["masks"][0], blob)
    x, y = out["peaks"][0].tolist()
    # The CRM is 12 x 12 cells (48 / 4), upsampled to 48 x 48 (align_corners): a step of
    # one sub-cell is 11 / 47 of a cell, 60 / 12 * 11 / 47 = 1.17 image px vertically and
    # 100 / 12 * 11 / 47 = 1.95 px horizontally. The peak is within one step of the top.
    assert abs(x - cx) <= 1.95 and abs(y - cy) <= 1.17
    assert blob[int(y), int(x)]


def fallback_resizing_twice(predictor, image):
    """The fallback as it was: the PRMs resized to the image for the proposals, and the
    chosen ones resized again by the retrieval."""
    import torch.nn.functional as F

    from prm.proposals import prm_support_proposals

    size = tuple(image.shape[1:])
    response, _ = predictor.respond(image, torch.zeros((0, *size), dtype=torch.bool))
    prms = F.interpolate(response["prms"][None].float(), size=size, mode="bilinear")[0]
    crm_size = tuple(response["crm"].shape[1:])
    factor = predictor.model.sub_pixel_factor
    peaks = crm_to_image_coords(response["peak_cells"][:, 1:], crm_size, factor, size)
    return predictor.retrieve(response, prm_support_proposals(prms, peaks))


@pytest.mark.parametrize("size", [(64, 64), (50, 70), (90, 40)])
def test_the_fallback_resizes_the_prms_once_with_the_same_outputs(size, monkeypatch):
    predictor = make_predictor(proposal_fn="prm")  # input 64 x 64
    image = torch.rand(3, *size)
    old = fallback_resizing_twice(predictor, image)
    response, proposals = predictor.respond(image)
    assert response["image_prms"].shape == (len(response["prms"]), *size)

    import prm.retrieval

    calls = []
    resize = prm.retrieval.F.interpolate
    monkeypatch.setattr(
        prm.retrieval.F, "interpolate", lambda *a, **k: calls.append(1) or resize(*a, **k)
    )
    new = predictor.retrieve(response, proposals)
    once = len(calls)
    without = {k: v for k, v in response.items() if k != "image_prms"}
    assert torch.equal(predictor.retrieve(without, proposals)["masks"], new["masks"])
    assert len(calls) - once == once + 1  # the retrieval's own resizing of the PRMs: gone
    assert len(new["masks"]) > 1
    for key in ("masks", "labels", "scores", "boxes", "peaks"):
        assert torch.equal(new[key], old[key]), key
    # Resizing is linear, so merging resized maps = resizing merged ones, to rounding.
    torch.testing.assert_close(new["prms"], old["prms"], rtol=1e-5, atol=1e-8)

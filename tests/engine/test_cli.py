"""The `prm` command line on tiny data: each command, and the mistakes people make."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from prm.cli import main
from prm.engine import load_model
from prm.retrieval import RetrievalConfig


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny network trained through `prm train` (shared by the tests of this file)."""
    root = tmp_path_factory.mktemp("cli")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    code = main(
        [
            "train", "--preset", "shapes", "--root", str(root / "data"),
            "--out", str(root / "run"), "--epochs", "1", "--image-size", "64",
            "--batch-size", "8", "--device", "cpu", "--quiet",
            "--set", "num_train_images=24", "--set", "num_val_images=8",
        ]
    )  # fmt: skip
    torch.set_num_threads(threads)
    assert code == 0
    return root / "run" / "last.pt"


def test_help_lists_every_command_with_examples(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for command in ("demo", "train", "predict", "evaluate", "proposals"):
        assert f"prm {command}" in text
    for command in ("demo", "train", "predict", "evaluate", "proposals"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "examples:" in capsys.readouterr().out


def test_train_wrote_a_run(checkpoint):
    run = checkpoint.parent
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()


def test_predict_and_evaluate_a_dataset(checkpoint, tmp_path, capsys):
    out = tmp_path / "pred"
    code = main(
        [
            "predict", "--checkpoint", str(checkpoint), "--dataset", "shapes",
            "--split", "test", "--limit", "3", "--out", str(out), "--proposals", "prm",
            "--class-threshold", "-100", "--evaluate", "--quiet",
            "--metrics", "instance", "classification",
        ]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results and {"image_id", "category_id", "segmentation", "score"} <= set(results[0])
    assert results[0]["image_id"].startswith("test_") and 1 <= results[0]["category_id"] <= 6
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["instance/mAP_r@0.5"] <= 1
    assert len(list((out / "overlays").glob("*.png"))) == 3
    assert "mAP_r@0.5" in capsys.readouterr().out
    # The HTML report, with a gallery that holds the PRMs and class response maps.
    page = (out / "report" / "index.html").read_text()
    assert "g000-prm00.png" in page and "g000-crm00.png" in page
    run = json.loads((out / "run.json").read_text())
    assert run["dataset"]["name"] == "shapes" and run["results"] == "results.json"

    # The results file is any method's input to `prm evaluate`, which reports too.
    code = main(
        [
            "evaluate", "--dataset", "shapes", "--split", "test", "--quiet",
            "--predictions", str(out / "results.json"), "--metrics", "instance",
            "--out", str(tmp_path / "eval"),
        ]
    )  # fmt: skip
    assert code == 0
    page = (tmp_path / "eval" / "report" / "index.html").read_text()
    assert "g000-pred.png" in page and "prm00" not in page  # masks only in a results file

    # `prm report` rebuilds from the folder; a run without a gallery gets one sampled from
    # its results file and the dataset remembered in run.json.
    (out / "report" / "index.html").unlink()
    assert main(["report", str(out), "--compare", str(tmp_path / "eval")]) == 0
    assert 'id="compare"' in (out / "report" / "index.html").read_text()
    for path in (tmp_path / "eval" / "gallery").iterdir():
        path.unlink()
    (tmp_path / "eval" / "gallery").rmdir()
    assert main(["report", str(tmp_path / "eval"), "--quiet"]) == 0
    assert (tmp_path / "eval" / "gallery" / "index.json").is_file()


def test_predict_without_split_remembers_the_split_it_predicted(checkpoint, tmp_path):
    # `prm report --resample` rebuilds the gallery from run.json's split: it must be the
    # reader's evaluation split that predict used, not None (the reader's training split).
    out = tmp_path / "pred"
    code = main(
        [
            "predict", "--checkpoint", str(checkpoint), "--dataset", "shapes",
            "--limit", "1", "--out", str(out), "--proposals", "prm", "--evaluate",
            "--quiet", "--metrics", "instance", "--overlays", "0",
        ]
    )  # fmt: skip
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["dataset"]["split"] == "val"
    assert json.loads((out / "results.json").read_text())[0]["image_id"].startswith("val_")


def test_predict_images_skips_unreadable_files(checkpoint, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(folder / "a.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="broken.jpg"):
        code = main(
            [
                "predict", "--checkpoint", str(checkpoint), "--images", str(folder),
                "--out", str(out), "--proposals", "prm", "--class-threshold", "-100",
                "--quiet",
            ]
        )  # fmt: skip
    assert code == 0
    assert "skipped 1 unreadable images" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert {r["image_id"] for r in results} == {"a"}
    assert (out / "overlays" / "a.png").is_file()


def test_tune_yaml_predict_round_trip(checkpoint, tmp_path):
    """`prm tune` writes YAML (per-class lists) and a tuned checkpoint; `prm predict` reads
    either and predicts what the chosen settings predict, not the defaults."""
    common = [
        "--dataset", "shapes", "--split", "test", "--limit", "3", "--proposals", "prm",
        "--class-threshold", "-100", "--quiet",
    ]  # fmt: skip
    tuned = tmp_path / "tuned.pt"
    code = main(
        ["tune", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "r.yaml"),
         "--alpha", "0.5", "2.0", "--nms-threshold", "0.0", "--per-class",
         "--save-checkpoint", str(tuned), *common]
    )  # fmt: skip
    assert code == 0
    chosen = RetrievalConfig.from_yaml(tmp_path / "r.yaml")
    assert isinstance(chosen.alpha, list) and len(chosen.alpha) == 6  # a YAML list
    assert chosen.nms_threshold == 0.0 and chosen.alpha[0] in (0.5, 2.0)
    assert RetrievalConfig.from_dict(load_model(tuned).inference["retrieval"]) == chosen

    def predict(name, *extra):
        out = tmp_path / name
        argv = ["predict", "--out", str(out), "--overlays", "0", *common, *extra]
        assert main(argv) == 0
        return json.loads((out / "results.json").read_text())

    from_yaml = predict("yaml", "--checkpoint", str(checkpoint), "--retrieval-config",
                        str(tmp_path / "r.yaml"))  # fmt: skip
    assert predict("tuned", "--checkpoint", str(tuned)) == from_yaml
    default = predict("default", "--checkpoint", str(checkpoint))
    # NMS at IoU 0 leaves one instance per image; the defaults keep more.
    assert len(from_yaml) == 3 < len(default)


PREDICT = "predict --out {tmp}/o --checkpoint "
MISTAKES = [
    (PREDICT + "{tmp}/none.pt --images {tmp}", "none.pt does not exist"),
    (PREDICT + "{ck} --images {tmp}/nothing", "nothing does not exist"),
    (PREDICT + "{ck} --images {tmp}/empty", "no images"),
    (PREDICT + "{ck} --dataset voc --root {tmp}/novoc", "novoc"),
    (PREDICT + "{tmp}/fake.pt --images {tmp}", "not a prm checkpoint"),
    ("train --preset shapes --config {tmp}/none.yaml", "none.yaml does not exist"),
    ("train --preset shapes --set nonsense=1 --out {tmp}/r", "unknown configuration keys"),
    ("train --preset shapes --val-fraction 1.5 --out {tmp}/r", "val_fraction must be < 1"),
    ("train --dataset folder --root {tmp}/empty --backbone small --weights none", "no image"),
    # issue 10, items 5 and 9: nonsense numbers, a file that is not a checkpoint
    ("train --preset shapes --set lr=-1 --out {tmp}/r", "lr must be > 0"),
    ("train --preset shapes --set lr=.nan --out {tmp}/r", "lr must be finite"),
    (PREDICT + "{ck} --images {tmp} --beta nan", "beta must be finite"),
    (PREDICT + "{ck} --images {tmp} --input-size -5", "input_size must be >= 1"),
    (PREDICT + "{ck} --images {tmp} --nms-threshold 3", "nms_threshold must be <= 1"),
    (PREDICT + "{ck} --images {tmp} --overlays -1", "--overlays must be >= 0"),
    (PREDICT + "{ck} --images {tmp} --class-threshold nan", "class_threshold must be a number"),
]


@pytest.mark.parametrize("argv, message", MISTAKES)
def test_mistakes_give_one_line_errors(argv, message, checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    torch.save({"state_dict": {}}, tmp_path / "fake.pt")
    argv = argv.format(tmp=tmp_path, ck=checkpoint).split()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_demo_smoke_run(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(
            [
                "demo", "--out", str(tmp_path / "demo"), "--train-images", "32",
                "--val-images", "3", "--test-images", "4", "--epochs", "1", "--workers", "1",
                "--quiet", "--distill", "--distill-images", "6", "--distill-epochs", "1",
            ]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    report = json.loads((tmp_path / "demo" / "report" / "report.json").read_text())
    assert set(report["metrics"]) == {
        "CAM + selective search",
        "PRM + selective search",
        "PRM, no proposals (fallback)",
        "PRM -> Mask R-CNN (distilled)",
    }
    assert "instance/mAP_r@0.5" in report["metrics"]["PRM -> Mask R-CNN (distilled)"]
    # alpha, beta, tau and the contour are tuned together; every row reads 200 proposals
    for tuned in report["tuned_retrieval"].values():
        assert tuned["alpha"] in (0.8, 2.0, 4.0) and tuned["beta"] in (3e-4, 1e-3, 2e-3, 4e-3, 1e-2)
        assert tuned["tau"] in (0.95, 1.1, 1.3) and tuned["contour_width"] in (5, 9)
        assert tuned["proposal_count"] == 200
    assert report["self_training"]["images"] == 6
    labels = json.loads((tmp_path / "demo" / "pseudo-labels" / "instances.json").read_text())
    assert len(labels["images"]) == 6
    assert (tmp_path / "demo" / "distill" / "last.pt").is_file()
    assert "| PRM + selective search |" in capsys.readouterr().out
    assert (tmp_path / "demo" / "report" / "overlays" / "prm").is_dir()
    page = (tmp_path / "demo" / "report" / "index.html").read_text()
    assert 'id="compare"' in page and "CAM + selective search" in page


def test_demo_with_a_teacher_trains_students_that_record_it(tmp_path, monkeypatch):
    import prm.data.shapes

    monkeypatch.setattr(prm.data.shapes, "DEFAULT_SPLIT_SIZES", {"train": 16, "val": 4, "test": 4})
    out = tmp_path / "taught"
    threads = torch.get_num_threads()
    try:
        code = main(
            [
                "demo", "--dataset", "glyphs", "--teacher", "lite0-cpu", "--out", str(out),
                "--train-images", "16", "--val-images", "2", "--test-images", "2",
                "--epochs", "1", "--teacher-epochs", "2", "--workers", "1", "--quiet",
                "--threads", "1",
            ]
        )  # fmt: skip
    finally:
        monkeypatch.undo()
        torch.set_num_threads(threads)
    assert code == 0
    report = json.loads((out / "report" / "report.json").read_text())
    # Teachers of the lite0-cpu recipe, students of the small network.
    assert report["teacher_config"]["backbone"].startswith("timm:efficientnet_lite0")
    assert (report["teacher_config"]["epochs"], report["train_config"]["epochs"]) == (2, 1)
    assert report["train_config"]["backbone"].partition(":")[0] == "small"
    assert report["train_config"]["teacher_weight"] == 5.0
    assert {"train teacher-PRM", "train teacher-CAM", "train PRM", "train CAM"} <= set(
        report["timings_s"]
    )
    for net in ("prm", "cam"):  # each student follows the teacher of its own kind
        state = torch.load(out / net / "last.pt", weights_only=True)
        assert state["teacher"]["path"] == str((out / f"teacher-{net}" / "last.pt").resolve())
        assert state["model_config"]["peak_stimulation"] == (net == "prm")
    for tuned in report["tuned_retrieval"].values():  # the class threshold is tuned too
        assert tuned["class_threshold"] in (-6.0, -3.0, -1.0, 0.0)


def test_the_demo_teachers_epochs_default_to_their_own_unless_told():
    from prm.demo import TEACHER_EPOCHS, _teacher_epochs, run_demo
    from prm.engine import load_config

    # 4 (chosen on validation images), not the lite0-cpu preset's 7; --epochs, a smoke
    # run's, still shortens every network; --teacher-epochs wins over both.
    assert TEACHER_EPOCHS == 4 and load_config("lite0-cpu").epochs == 7
    assert _teacher_epochs(None, None) == TEACHER_EPOCHS
    assert _teacher_epochs(1, None) == 1
    assert _teacher_epochs(1, 3) == 3 and _teacher_epochs(None, 3) == 3
    with pytest.raises(ValueError, match="give a teacher"):
        run_demo("unused", teacher_epochs=3)


def test_predict_fails_when_no_image_could_be_read(checkpoint, tmp_path, capsys):
    """Issue 10, item 6: it exited 0 with an empty results file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    argv = ["predict", "--checkpoint", str(checkpoint), "--images", str(folder), "--quiet"]
    with pytest.warns(UserWarning, match="broken.jpg"):
        code = main([*argv, "--out", str(tmp_path / "out"), "--proposals", "prm"])
    assert code == 2
    assert "no image could be read (first: " in capsys.readouterr().err


def test_demo_on_glyphs_and_the_threads_flag(tmp_path, capsys, monkeypatch):
    import prm.data.shapes

    # The training's own validation split (300 images by default) cut to a smoke size.
    monkeypatch.setattr(prm.data.shapes, "DEFAULT_SPLIT_SIZES", {"train": 16, "val": 4, "test": 4})
    threads = torch.get_num_threads()
    try:
        with pytest.warns(UserWarning, match="stays at chance level on GlyphScenes"):
            code = main(
                [
                    "demo", "--dataset", "glyphs", "--out", str(tmp_path / "glyphs"),
                    "--train-images", "16", "--val-images", "2", "--test-images", "2",
                    "--epochs", "1", "--workers", "1", "--quiet", "--threads", "1",
                ]
            )  # fmt: skip
        assert code == 0
        report = json.loads((tmp_path / "glyphs" / "report" / "report.json").read_text())
        assert report["dataset"] == "glyphs" and report["torch_threads"] == 1
        assert report["train_config"]["dataset"] == "glyphs"
        assert "GlyphScenes test split" in capsys.readouterr().out
        assert list((tmp_path / "glyphs" / "data").glob("glyphscenes-*.npz"))
        # --threads reaches torch before the command runs
        seen = []
        monkeypatch.setattr(torch, "set_num_threads", seen.append)
        assert main(["train", "--threads", "3", "--set", "no_such_key=1", "--quiet"]) == 2
        assert seen == [3]
    finally:
        monkeypatch.undo()
        torch.set_num_threads(threads)
    with pytest.raises(SystemExit):
        main(["demo", "--threads", "0"])


def test_tune_saves_thresholds_where_predict_picks_them_up(checkpoint, tmp_path, capsys):
    import shutil

    import yaml

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(checkpoint, run / "last.pt")  # the shared run folder stays untuned
    code = main(
        [
            "tune", "--checkpoint", str(run / "last.pt"), "--dataset", "shapes",
            "--split", "val", "--limit", "2", "--proposals", "prm", "--quiet",
            "--class-threshold", "-100", "--peak-threshold-mode", "relative",
            "--peak-threshold", "0.5", "0.9", "--proposal-count", "50", "100",
            "--smooth-strided", "no", "yes", "--metric", "instance/mAP_r@0.1",
        ]
    )  # fmt: skip
    assert code == 0
    saved = yaml.safe_load((run / "retrieval.yaml").read_text())
    assert saved["predictor"]["peak_threshold"] in (0.5, 0.9)
    assert saved["predictor"]["peak_threshold_mode"] == "relative"
    assert saved["predictor"]["smooth_strided"] in (False, True)
    assert saved["retrieval"]["proposal_count"] in (50, 100)
    out = capsys.readouterr().out
    assert out.count("mAP_r@0.1 =") == 9  # eight combinations, then the best
    assert "'smooth_strided': True" in out and "'smooth_strided': False" in out

    # `prm predict` uses them without flags; --retrieval-config none ignores them.
    from prm.cli import build_parser
    from prm.cli.predict import build_predictor

    argv = ["predict", "--checkpoint", str(run / "last.pt"), "--images", str(tmp_path)]
    argv += ["--out", str(tmp_path / "predicted")]
    _, predictor = build_predictor(build_parser().parse_args(argv))
    assert predictor.peak_selection.peak_threshold == saved["predictor"]["peak_threshold"]
    assert predictor.peak_selection.peak_threshold_mode == "relative"
    assert predictor.peak_selection.class_threshold == -100
    assert predictor.retrieval.proposal_count == saved["retrieval"]["proposal_count"]
    assert predictor.smooth_strided is saved["predictor"]["smooth_strided"]
    assert "using the tuned settings in" in capsys.readouterr().out
    args = build_parser().parse_args(argv + ["--retrieval-config", "none"])
    _, predictor = build_predictor(args)
    assert (
        predictor.peak_selection.peak_threshold == 0.0 and predictor.retrieval.proposal_count == 100
    )
    assert predictor.smooth_strided is False


def test_settings_precedence_checkpoint_tuned_file_explicit_file_flags(checkpoint, tmp_path):
    """checkpoint's stored settings < retrieval.yaml beside it < --retrieval-config < flags,
    each overriding only the fields it sets."""
    import yaml

    from prm.backprop import PeakSelection
    from prm.cli import build_parser
    from prm.cli.predict import build_predictor, read_tuned_settings
    from prm.engine.checkpoint import with_inference_settings

    run = tmp_path / "run"
    stored = {"retrieval": {"beta": 1e-3, "nms_threshold": 0.5}}
    stored["peak_selection"] = {"class_threshold": -1.0, "peak_threshold": 0.5}
    with_inference_settings(checkpoint, run / "last.pt", **stored, smooth_strided=True)
    tuned = {"retrieval": {"beta": 2e-3}, "predictor": {"peak_threshold": 0.6}}
    tuned["predictor"]["smooth_strided"] = False
    (run / "retrieval.yaml").write_text(yaml.safe_dump(tuned))
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({"retrieval": {"tau": 0.5}}))

    def settings(*extra):
        argv = ["predict", "--checkpoint", str(run / "last.pt"), "--images", str(tmp_path)]
        args = build_parser().parse_args([*argv, "--out", str(tmp_path / "o"), *extra])
        _, predictor = build_predictor(args)
        r, p = predictor.retrieval, predictor.peak_selection
        rule = predictor.smooth_strided
        return r.beta, r.nms_threshold, r.tau, p.class_threshold, p.peak_threshold, rule

    assert settings("--retrieval-config", "none") == (1e-3, 0.5, 0.95, -1.0, 0.5, True)
    assert settings() == (2e-3, 0.5, 0.95, -1.0, 0.6, False)
    # An explicit file replaces retrieval.yaml (not layered on it).
    assert settings("--retrieval-config", str(tmp_path / "other.yaml")) == (
        1e-3, 0.5, 0.5, -1.0, 0.5, True,
    )  # fmt: skip
    assert settings("--beta", "4e-3", "--peak-threshold", "0.7", "--smooth-strided", "yes") == (
        4e-3, 0.5, 0.95, -1.0, 0.7, True,
    )  # fmt: skip
    # The tuned file is checked like any settings file, naming it.
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"retrieval": {}, "predictor": {"x": 1}}))
    with pytest.raises(ValueError, match="bad.yaml: 'predictor' may hold only"):
        read_tuned_settings(tmp_path / "bad.yaml", RetrievalConfig(), PeakSelection())
    bad_mode = {"retrieval": {}, "predictor": {"peak_threshold_mode": "loud"}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad_mode))
    with pytest.raises(ValueError, match="bad.yaml: peak_threshold_mode must be"):
        read_tuned_settings(tmp_path / "bad.yaml", RetrievalConfig(), PeakSelection())
    bad_rule = {"retrieval": {}, "predictor": {"smooth_strided": "maybe"}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad_rule))
    with pytest.raises(ValueError, match="bad.yaml: smooth_strided must be true or false"):
        read_tuned_settings(tmp_path / "bad.yaml", RetrievalConfig(), PeakSelection())


def test_demo_in_two_processes_gives_the_one_process_results(tmp_path):
    """With workers > 1 the demo trains the two networks side by side and runs the
    table's rows in two processes: the same checkpoints and byte-identical results files
    as one process doing everything in turn."""
    from prm.data import build_dataset
    from prm.demo import _Demo, _proposals
    from prm.engine import load_config

    data = tmp_path / "data"
    val_set = build_dataset("shapes", data, "val", num_images=2, seed=0)
    test_set = build_dataset("shapes", data, "test", num_images=3, seed=0)
    cache = _proposals(tmp_path / "proposals", (val_set, test_set), 1, False)
    base = load_config(
        "shapes", root=str(data), num_train_images=16, num_val_images=4, epochs=1, batch_size=8
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    demos = {}
    try:
        for workers in (1, 2):
            demo = demos[workers] = _Demo(tmp_path / f"w{workers}", 2, False)
            demo.test_set, demo.grid = test_set, {"alpha": [2.0], "beta": [1e-3, 1e-2]}
            checkpoints = demo.train_both(base, workers)
            # Students of those networks: each follows the teacher of its own kind.
            students = demo.train_both(base, workers, checkpoints, prefix="student-")
            for net in ("prm", "cam"):
                record = torch.load(students[net], weights_only=True)["teacher"]
                assert record["path"] == str(checkpoints[net].resolve()), (workers, net)
            demo.compare(checkpoints, cache, val_set, workers)
            assert torch.get_num_threads() == 1  # restored after the parallel parts
    finally:
        torch.set_num_threads(threads)
    assert "train PRM + CAM (2 processes)" in demos[2].timings and "train CAM" in demos[1].timings
    for net in ("prm", "cam", "student-prm", "student-cam"):
        one, two = (
            torch.load(tmp_path / f"w{n}" / net / "last.pt", weights_only=True) for n in (1, 2)
        )
        assert all(torch.equal(one["model"][k], two["model"][k]) for k in one["model"]), net
    for name in ("results-cam.json", "results-prm.json", "results-prm-fallback.json"):
        one, two = ((tmp_path / f"w{n}" / "report" / name).read_bytes() for n in (1, 2))
        assert one == two, name
    assert demos[1].tuned == demos[2].tuned and demos[1].rows == demos[2].rows
    assert list(demos[2].rows) == list(demos[1].rows)  # the table's order

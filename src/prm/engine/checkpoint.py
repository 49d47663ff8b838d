"""Checkpoints: written atomically, read with ``weights_only=True``, checked on load."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from prm.files import write_atomic
from prm.model import PeakResponseNet, build_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "with_inference_settings",
]

CHECKPOINT_FORMAT = "prm-checkpoint-v1"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically.

    The file is written to a temporary name in the same folder, flushed to disk and then
    renamed over ``path``, so an interruption leaves either the old or the new checkpoint,
    never half of one.
    """
    state = {"format": CHECKPOINT_FORMAT, **state}
    write_atomic(path, lambda handle: torch.save(state, handle), fsync=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable prm checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes: noise here
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        # torch's message advises retrying with weights_only=False, which would run any
        # code the file holds: never pass that on; say what the file is not instead.
        raise ValueError(_not_a_checkpoint(path, exc)) from None
    return _checked(path, state)


def _not_a_checkpoint(path: Path, exc: Exception) -> str:
    """One line saying why ``path`` could not be read as a checkpoint."""
    if "Unsupported global" in str(exc):  # a pickled class weights_only refuses
        return (
            f"{path} is not a prm checkpoint: it holds Python objects other than tensors "
            "and plain values (a pickled model or another program's file), which are "
            "never loaded, as they could run code"
        )
    if isinstance(exc, (EOFError, OSError)) or "PytorchStreamReader" in str(exc):
        return f"{path} is not a prm checkpoint: a truncated or damaged file ({type(exc).__name__})"
    return f"{path} is not a prm checkpoint: not a file written by torch.save"


def _checked(path: Path, state: Any) -> dict[str, Any]:
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a prm checkpoint (expected format {CHECKPOINT_FORMAT!r}); "
            "to start from backbone weights use --weights instead"
        )
    return state


def check_compatible(
    state: dict[str, Any],
    path: str | Path,
    *,
    backbone: str | None = None,
    class_names: list[str] | None = None,
) -> None:
    """Refuse a checkpoint of another architecture or class list, naming both."""
    config = state["model_config"]
    if backbone is not None and config["backbone"] != backbone:
        raise ValueError(f"checkpoint {path} is a {config['backbone']} model, not {backbone}")
    if class_names is not None and list(config["class_names"] or []) != list(class_names):
        raise ValueError(
            f"checkpoint {path} was trained on classes {config['class_names']}, "
            f"the dataset has {list(class_names)}"
        )


def load_model(
    path: str | Path,
    *,
    backbone: str | None = None,
    class_names: list[str] | None = None,
    map_location: str | torch.device = "cpu",
    **overrides: Any,
) -> PeakResponseNet:
    """Rebuild a trained :class:`PeakResponseNet` from a checkpoint.

    Args:
        path: checkpoint file.
        backbone, class_names: when given, the checkpoint must match them.
        map_location: where to load tensors.
        **overrides: inference-time settings that carry no weights
            (``sub_pixel_factor``, ``peak_filter``, ``win_size``, ``inference``).

    Returns:
        The model in eval mode, with what inference needs: its input size, mean/std,
        class names, peak type (``peak_stimulation``) and stored inference settings.
    """
    state = load_checkpoint(path, map_location)
    check_compatible(state, path, backbone=backbone, class_names=class_names)
    return model_from_state(state, path, **overrides)


def model_from_state(state: dict[str, Any], path: str | Path, **overrides: Any) -> PeakResponseNet:
    """The :class:`PeakResponseNet` of a checkpoint already read with
    :func:`load_checkpoint` (``path`` names it in errors); see :func:`load_model`."""
    config = dict(state["model_config"])
    allowed = {"sub_pixel_factor", "peak_filter", "win_size", "inference"}
    if set(overrides) - allowed:
        raise ValueError(f"only {sorted(allowed)} can be changed at load time")
    config.update(overrides)
    if config.get("input_size") is None and "config" in state:
        # Checkpoints from before the model kept its input size: the training size.
        config["input_size"] = state["config"].get("image_size")
    name = config.pop("backbone")
    config.pop("in_channels", None)
    model = build_model(name, config.pop("num_classes"), weights=None, **config)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(
            f"checkpoint {path} does not match its own model description: {exc}"
        ) from exc
    return model.eval()


def with_inference_settings(path: str | Path, out: str | Path, **settings: dict[str, Any]) -> Path:
    """Copy a checkpoint with inference settings stored in it (e.g. tuned retrieval).

    A model loaded from ``out`` carries them, and :class:`~prm.predictor.Predictor` uses
    them as its defaults.

    Args:
        path: the checkpoint to start from (never modified).
        out: where to write the copy (not ``path``).
        **settings: ``peak_selection=`` and/or ``retrieval=``: plain dicts of the fields of
            :class:`~prm.backprop.PeakSelection` / :class:`~prm.retrieval.RetrievalConfig`;
            ``smooth_strided=``: the back-propagation rule (a bool, see
            :class:`~prm.predictor.Predictor`).

    Returns:
        ``out``.
    """
    path, out = Path(path), Path(out)
    if out.resolve() == path.resolve():
        raise ValueError(f"{out}: write the tuned checkpoint to a new file, not over its input")
    unknown = sorted(set(settings) - {"peak_selection", "retrieval", "smooth_strided"})
    if unknown:
        raise ValueError(f"unknown inference settings {unknown}")
    rule = settings.get("smooth_strided", False)
    if not isinstance(rule, bool):
        raise ValueError(f"smooth_strided must be True or False, got {rule!r}")
    state = load_checkpoint(path)
    config = dict(state["model_config"])
    config["inference"] = {**(config.get("inference") or {}), **settings}
    state["model_config"] = config
    save_checkpoint(out, state)
    return out

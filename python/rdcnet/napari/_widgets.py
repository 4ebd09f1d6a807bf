"""The napari widgets (magicgui): "Segment with RDCNet" and "Train RDCNet". They collect the
inputs, run :mod:`rdcnet.napari._core` in a worker thread (the viewer stays responsive, a busy
bar shows in napari's activity dock) and add the results as layers."""

import dataclasses
from pathlib import Path

import napari
import torch
from magicgui import magic_factory
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info

from . import _core

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _add_layers(viewer, layers) -> None:
    for data, meta, kind in layers:
        getattr(viewer, f"add_{kind}")(data, **meta)


def _prefill_decoding(widget) -> None:
    """When a model is picked, show its stored decoding parameters."""

    @widget.model_path.changed.connect
    def _on_model(path):
        try:
            d = _core.decoding_defaults(path)
        except Exception:  # not (yet) a readable model: keep the fields as they are
            return
        widget.min_distance.value = d["margin"] if d["min_distance"] is None else d["min_distance"]
        widget.min_votes.value = d["min_votes"]
        widget.smooth_radius.value = d["smooth_radius"]
        widget.opening_radius.value = d["opening_radius"] or 0.0
        widget.max_distance.value = d["max_distance"] or 0.0


@magic_factory(
    widget_init=_prefill_decoding, call_button="Segment",
    model_path={"label": "model (best.pt or .zip)", "filter": "*.pt *.zip"},
    device={"choices": DEVICES}, tile={"min": 0, "max": 16384, "step": 64, "tooltip": "0: automatic tiles"},
    precision={"choices": ["auto", "fp32", "bf16"],
               "tooltip": "auto: bfloat16 where the CPU/GPU computes it natively (about twice as fast)"},
    min_distance={"min": 0.0, "max": 1e4, "tooltip": "peak window half-size (physical units)"},
    min_votes={"min": 1, "max": 1_000_000}, smooth_radius={"min": 0, "max": 10},
    opening_radius={"min": 0.0, "max": 1e3, "tooltip": "0: no opening"},
    max_distance={"min": 0.0, "max": 1e4, "tooltip": "0: no limit"},
)
def segment_widget(viewer: napari.Viewer, image: Image, model_path: Path = Path(""),
                   device: str = "cpu", precision: str = "auto", tile: int = 0, min_distance: float = 5.0,
                   min_votes: int = 5,
                   smooth_radius: int = 1, opening_radius: float = 0.0, max_distance: float = 0.0,
                   add_votes: bool = False, add_centres: bool = False):
    """Segment the image layer with an RDCNet checkpoint or bioimage.io package; adds a Labels layer."""
    if image is None:
        raise ValueError("image: choose an image layer")

    def run():
        from ..checkpoint import load_model

        model, post = load_model(model_path, device=device)
        post = dataclasses.replace(post, min_distance=min_distance, min_votes=min_votes, smooth_radius=smooth_radius,
                                   opening_radius=opening_radius or None, max_distance=max_distance or None)
        return _core.segment(image.data, model, post, scale=image.scale, rgb=image.rgb, device=device,
                             tile=tile or None, with_votes=add_votes, with_centres=add_centres, name=image.name,
                             precision=precision)

    worker = create_worker(run, _progress={"total": 0, "desc": "RDCNet: segmenting"})
    worker.returned.connect(lambda layers: _add_layers(viewer, layers))
    worker.start()
    return worker


def _one_training_at_a_time(widget) -> None:
    """While a training runs, its button is disabled (a second click would start a second one);
    each training gets a new run folder (the next one is offered as soon as one starts)."""

    @widget.called.connect
    def _on_start(worker):
        if worker is None:
            return
        widget.call_button.enabled = False
        worker.finished.connect(lambda: setattr(widget.call_button, "enabled", True))
        current = Path(str(widget.out_dir.value))
        root = current.parent
        if current.name.startswith("run-"):  # a folder offered by default_run_dir: offer the next one
            widget.out_dir.value = Path(_core.default_run_dir(root, taken=[current]))


@magic_factory(
    widget_init=_one_training_at_a_time,
    call_button="Train", out_dir={"mode": "d", "label": "run folder"}, device={"choices": DEVICES},
    minutes={"min": 0.0, "max": 1e4, "label": "time (minutes)",
             "tooltip": "training time budget; 0: the device's default (a few minutes on a CPU)"},
    epochs={"min": 0, "max": 1000, "tooltip": "0: planned from the drawn objects and the time budget"},
    steps_per_epoch={"min": 0, "max": 100_000, "tooltip": "0: planned"},
    margin={"min": 0.0, "max": 1e3, "tooltip": "ESJ margin (physical units); 0: planned from the object size"},
    iterations={"min": 0, "max": 20, "tooltip": "0: planned"},
)
def train_widget(viewer: napari.Viewer, image: Image, labels: Labels,
                 out_dir: Path = Path(_core.default_run_dir()), minutes: float = 0.0, epochs: int = 0,
                 steps_per_epoch: int = 0, margin: float = 0.0, iterations: int = 0, device: str = "cpu",
                 overwrite: bool = False):
    """Train a new RDCNet on the image and the objects drawn in the Labels layer; best.pt is written to
    the run folder (use it in "Segment with RDCNet"). Settings left at 0 are planned from the drawn
    objects and the machine (plan.json in the run folder). The progress bar shows the epoch, the loss
    and the time left."""
    if image is None or labels is None:
        raise ValueError("choose an image layer and a Labels layer with drawn objects")
    request = _core.TrainRequest(out_dir=str(out_dir), epochs=epochs or None, steps_per_epoch=steps_per_epoch or None,
                                 margin=margin or None, iterations=iterations or None, device=device,
                                 time=f"{minutes}m" if minutes else None, overwrite=overwrite)
    worker = create_worker(_core.training_progress, image.data, labels.data, request, scale=image.scale,
                           rgb=image.rgb, _progress={"total": 1, "desc": "RDCNet: planning"})

    def _show(update):
        worker.pbar.total = update["steps"]  # known once the plan is made
        worker.pbar.set_description(_core.describe_progress(update))

    worker.yielded.connect(_show)
    worker.returned.connect(lambda result: show_info(
        f"RDCNet: F1@0.5 {result.best_f1:.3f} on the drawn objects; model {result.best_checkpoint}"))
    worker.start()
    return worker

"""What the napari widgets do, without napari or Qt: segment an image layer's data, train on an
image and its Labels layer, and the sample data. Results are napari "layer data tuples"
``(data, metadata, layer type)``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

LayerDataTuple = Tuple[np.ndarray, dict, str]


def sample_nuclei_2d() -> List[LayerDataTuple]:
    """A 256 × 256 image of synthetic touching nuclei and its true labels."""
    from ..data import nuclei_2d

    image, labels = nuclei_2d(1, (256, 256), seed=0)[0]
    return [(image, {"name": "nuclei"}, "image"), (labels, {"name": "nuclei labels"}, "labels")]


def sample_nuclei_3d() -> List[LayerDataTuple]:
    """An anisotropic stack of synthetic nuclei (scale = the voxel spacing) and its labels."""
    from ..data import DEFAULT_SPACING_3D, nuclei_3d

    image, labels = nuclei_3d(1, (24, 128, 128), seed=0)[0]
    scale = list(DEFAULT_SPACING_3D)
    return [(image, {"name": "nuclei 3D", "scale": scale}, "image"),
            (labels, {"name": "nuclei 3D labels", "scale": scale}, "labels")]


def decoding_defaults(model_path) -> dict:
    """The decoding parameters stored with a checkpoint or package (to pre-fill the widget)."""
    from ..checkpoint import load_model

    _, post = load_model(model_path)
    return post.to_dict()


def _spatial_scale(scale: Optional[Sequence[float]], ndim: int) -> Optional[Tuple[float, ...]]:
    if scale is None:
        return None
    scale = tuple(float(s) for s in scale)[-ndim:]
    return None if all(s == 1.0 for s in scale) else scale


def _resample(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """``array`` resampled onto ``shape`` (spatial axes; a trailing RGB axis is kept)."""
    from scipy import ndimage

    zoom = [n / m for n, m in zip(shape, array.shape)] + [1] * (array.ndim - len(shape))
    out = ndimage.zoom(array, zoom, order=order, mode="nearest", grid_mode=True)
    # zoom can be off by one pixel: crop or edge-pad to the exact shape.
    out = out[tuple(slice(0, n) for n in shape)]
    pad = [(0, n - m) for n, m in zip(shape, out.shape)] + [(0, 0)] * (out.ndim - len(shape))
    return np.pad(out, pad, mode="edge")


def segment(image: np.ndarray, model, postprocess, *, scale: Optional[Sequence[float]] = None, rgb: bool = False,
            device: str = "cpu", tile: Optional[int] = None, with_votes: bool = False, with_centres: bool = False,
            name: str = "image", progress: Optional[Callable[[str], None]] = None,
            precision: str = "auto") -> List[LayerDataTuple]:
    """Segment one image layer's data with a loaded model.

    ``scale``: the layer's scale (physical pixel size per axis). When it is given and differs from
    the spacing the model was trained at, the image is resampled to the model's spacing, segmented,
    and the labels are resampled back (nearest neighbour). ``rgb``: the layer is RGB (channels last).
    ``precision``: the network's arithmetic, as :func:`rdcnet.predict.predict`.
    Returns the Labels layer, and if asked the vote map (Image) and the centres (Points), all placed
    in the layer's physical coordinates."""
    from rdcnet_ext import ops

    from ..postprocess import foreground
    from ..predict import predict

    cfg = model.config
    image = np.asarray(image)
    spatial = image.shape[:-1] if rgb else image.shape
    if len(spatial) != cfg.ndim:
        raise ValueError(f"image: the model segments {cfg.ndim}D images, the layer {name!r} has {len(spatial)} "
                         f"spatial axes (shape {image.shape})")
    say = progress or (lambda _msg: None)
    layer_scale = _spatial_scale(scale, cfg.ndim)
    model_spacing = tuple(float(s) for s in cfg.spacing)
    resample = layer_scale is not None and not np.allclose(layer_scale, model_spacing, rtol=0.01)
    work = image
    if resample:
        say("resampling to the model's spacing")
        target = [max(1, int(round(n * s / m))) for n, s, m in zip(spatial, layer_scale, model_spacing)]
        work = _resample(image.astype(np.float32), target, order=1)
    say("segmenting")
    tile_shape = None if not tile else tuple(min(int(tile), n) if cfg.ndim == 2 or a > 0 else n
                                             for a, n in enumerate(work.shape[:cfg.ndim]))
    labels, out = predict(model, work, postprocess, tile_shape=tile_shape, device=device, return_output=True,
                          precision=precision)
    # Physical placement: the model grid has the model's spacing when resampled, else the layer's.
    grid_scale = list(model_spacing if resample else (layer_scale or (1.0,) * cfg.ndim))
    meta = {"scale": list(layer_scale or (1.0,) * cfg.ndim)}
    if resample:
        labels = _resample(labels, spatial, order=0)
    layers: List[LayerDataTuple] = [(labels.astype(np.int32), {"name": f"{name} RDCNet labels", **meta}, "labels")]
    if with_votes or with_centres:
        say("votes and centres")
        emb = out.embeddings.detach().float().contiguous()
        mask = foreground(out.probabilities, postprocess.foreground_threshold).contiguous()
        votes = ops.hough_votes(emb, mask, spacing=model_spacing)
        if with_votes:
            layers.append((votes.cpu().numpy(), {"name": f"{name} RDCNet votes", "scale": grid_scale,
                                                 "colormap": "magma", "blending": "additive"}, "image"))
        if with_centres:
            centres = ops.find_peaks(votes, postprocess.peak_window, postprocess.min_votes, model_spacing, postprocess.smooth_radius)
            layers.append((centres.cpu().numpy().astype(np.float64), {"name": f"{name} RDCNet centres",
                           "scale": grid_scale, "size": 3, "face_color": "yellow"}, "points"))
    return layers


@dataclasses.dataclass
class TrainRequest:
    """What the Train widget collects. Settings left None are planned from the drawn objects and
    the machine (:mod:`rdcnet.plan`); the others override the plan. ``time``: the budget, e.g.
    "3m" (default: the device's, :data:`rdcnet.plan.DEFAULT_TIME`); ``factor``: in-plane (z keeps 1)."""

    out_dir: str
    epochs: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    margin: Optional[float] = None
    groups: Optional[int] = None
    channels_per_group: Optional[int] = None
    iterations: Optional[int] = None
    factor: Optional[int] = None
    device: str = "cpu"
    time: Optional[object] = None
    overwrite: bool = False  # replace a model already in out_dir (otherwise refused)


def train_on_layer(image: np.ndarray, labels: np.ndarray, request: TrainRequest, *, scale=None, rgb: bool = False,
                   callback: Optional[Callable[[dict], None]] = None):
    """Train a new RDCNet on one image and its (drawn) labels with :func:`rdcnet.train.train`, with
    the settings :func:`rdcnet.plan.plan_training` plans for them (``request``'s values override);
    the same pair serves as validation (there is only one). The plan is saved as ``plan.json`` in
    the run folder. ``callback`` gets the progress of every step (:func:`rdcnet.train.train`). A
    run folder that already holds a model is refused unless ``request.overwrite``. Returns the
    ``TrainResult``."""
    from ..model import RDCNet
    from ..plan import PLAN_FILE, crop_sampler, fingerprint, plan_training
    from ..train import train

    image, labels = np.asarray(image), np.asarray(labels)
    spatial = image.shape[:-1] if rgb else image.shape
    if labels.shape != spatial:
        raise ValueError(f"labels: expected the image's spatial shape {spatial}, got {labels.shape}")
    if labels.max() <= 0:
        raise ValueError("labels: draw at least one object (label > 0) before training")
    ndim = len(spatial)
    if ndim not in (2, 3):
        raise ValueError(f"image: expected a 2D or 3D image, got shape {image.shape}")
    spacing = _spatial_scale(scale, ndim) or (1.0,) * ndim
    if not request.overwrite and (Path(request.out_dir) / "best.pt").exists():
        raise ValueError(f"run folder {request.out_dir} already holds a trained model (best.pt): choose another "
                         "folder, or tick 'overwrite' to replace it")
    pair = [(image, labels.astype(np.int32))]
    factor = None if request.factor is None else ((1, request.factor, request.factor) if ndim == 3
                                                  else (request.factor,) * 2)
    options = {"epochs": request.epochs, "steps_per_epoch": request.steps_per_epoch, "margin": request.margin,
               "groups": request.groups, "channels_per_group": request.channels_per_group,
               "iterations": request.iterations, "factor": factor, "time": request.time}
    plan = plan_training(fingerprint(pair, spacing), options, device=request.device, val_pixels=labels.size,
                         sample=crop_sampler(pair))
    model = RDCNet(ndim, image.shape[-1] if rgb else 1, spacing=spacing, **plan.model_kwargs())
    cfg = plan.train_config(request.out_dir, device=request.device)
    plan.save(Path(request.out_dir) / PLAN_FILE)
    return train(model, pair, pair, cfg, resume=False, progress=False, callback=callback)


class TrainingCancelled(Exception):
    """The training was stopped from the viewer (its finished epochs are kept)."""


def training_progress(image: np.ndarray, labels: np.ndarray, request: TrainRequest, *, scale=None,
                      rgb: bool = False):
    """:func:`train_on_layer` as a generator for napari's worker threads: yields the progress of
    every step (epoch, step, steps, loss, eta_seconds) and returns the ``TrainResult``. Closing
    the generator (the worker is quit) stops the training at its next step."""
    import queue
    import threading

    updates, stop, outcome = queue.Queue(), threading.Event(), {}

    def report(update: dict) -> None:
        if stop.is_set():
            raise TrainingCancelled("training stopped from the viewer")
        updates.put(update)

    def run() -> None:
        try:
            outcome["result"] = train_on_layer(image, labels, request, scale=scale, rgb=rgb, callback=report)
        except BaseException as exc:  # handed to the generator's caller below
            outcome["error"] = exc
        finally:
            updates.put(None)

    thread = threading.Thread(target=run, name="rdcnet-training", daemon=True)
    thread.start()
    try:
        while (update := updates.get()) is not None:
            yield update
    finally:
        stop.set()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def describe_progress(update: dict) -> str:
    """One line for a progress update of :func:`training_progress`."""
    eta = update["eta_seconds"]
    eta = f"{eta:.0f} s" if eta < 90 else f"{eta / 60:.0f} min"
    return (f"RDCNet: epoch {update['epoch']}/{update['epochs']}, loss {update['loss']:.3f}, "
            f"about {eta} left")


def default_run_dir(root=None, taken=()) -> str:
    """A new run folder for the Train widget: the first ``run-NNN`` under ``~/rdcnet-napari-runs``
    that neither exists nor is in ``taken`` (a training just started), so that no training
    replaces an earlier one's model."""
    root = Path.home() / "rdcnet-napari-runs" if root is None else Path(root)
    taken = {str(Path(t)) for t in taken}
    n = 1
    while (root / f"run-{n:03d}").exists() or str(root / f"run-{n:03d}") in taken:
        n += 1
    return str(root / f"run-{n:03d}")

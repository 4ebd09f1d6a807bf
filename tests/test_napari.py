"""The napari plugin: its Qt-free core (segment, train, sample data) against rdcnet's public API,
and its widgets, offscreen and, where Qt can open an X display (Xvfb in CI), docked in a real napari
viewer, when napari is installed (the `napari` extra; the `test` extra includes it)."""

import importlib.util
import os
import types


def _qt_display_works() -> bool:
    """Whether a napari viewer opens and renders on the X display, tried in a child process: a display
    Qt or OpenGL cannot use (e.g. a missing platform library) aborts the process, which must not take
    the test run with it."""
    import subprocess
    import sys

    if not os.environ.get("DISPLAY") or importlib.util.find_spec("napari") is None:
        return False
    # A viewer that renders once: the X display, Qt's platform libraries and OpenGL all work.
    code = "import napari; v = napari.Viewer(show=False); v.screenshot(canvas_only=True); v.close()"
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb"}  # the X display itself, not a platform set elsewhere
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, env=env).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


# A real viewer needs an X display with OpenGL (pytest-xvfb starts Xvfb when it is installed, as in CI);
# without a usable one, Qt's offscreen platform still runs the widgets (not the viewer's canvas).
HAS_DISPLAY = _qt_display_works()
if not HAS_DISPLAY:
    os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before any Qt application exists
os.environ.setdefault("LIBGL_ALWAYS_SOFTWARE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rdcnet.data import DEFAULT_SPACING_3D  # noqa: E402
from rdcnet.napari import _core  # noqa: E402
from rdcnet.postprocess import PostprocessConfig  # noqa: E402
from rdcnet.predict import predict  # noqa: E402
from rdcnet.checkpoint import save_checkpoint  # noqa: E402
from rdcnet.train import TrainConfig
from rdcnet_ext import ops  # noqa: E402
from helpers import tiny_model  # noqa: E402

POST = PostprocessConfig(margin=4.0, min_votes=2, smooth_radius=1)


_model = tiny_model


# ---- the core, without Qt ------------------------------------------------------------------------


def test_sample_data():
    (image, meta, kind), (labels, lmeta, lkind) = _core.sample_nuclei_2d()
    assert (kind, lkind) == ("image", "labels") and image.shape == labels.shape == (256, 256) and labels.max() > 5
    (image3, meta3, _), (labels3, _, _) = _core.sample_nuclei_3d()
    assert image3.ndim == 3 and meta3["scale"] == list(DEFAULT_SPACING_3D) and labels3.shape == image3.shape


def test_segment_equals_predict_with_votes_and_centres():
    model = _model()
    image = _core.sample_nuclei_2d()[0][0][:100, :90]
    layers = _core.segment(image, model, POST, with_votes=True, with_centres=True, name="cells")
    (labels, meta, kind), (votes, _, vkind), (centres, _, pkind) = layers
    assert (kind, vkind, pkind) == ("labels", "image", "points") and meta["name"] == "cells RDCNet labels"
    expected, out = predict(model, image, POST, return_output=True)
    np.testing.assert_array_equal(labels, expected)
    mask = out.probabilities.argmax(0) != 0
    np.testing.assert_array_equal(votes, ops.hough_votes(out.embeddings, mask).numpy())
    assert len(centres) >= labels.max() > 3  # every label comes from a centre (opening may drop some)


def test_segment_rgb_and_3d_with_the_model_spacing():
    rgb = np.random.default_rng(0).random((40, 36, 3)).astype(np.float32)
    model = _model(in_channels=3)
    np.testing.assert_array_equal(_core.segment(rgb, model, POST, rgb=True)[0][0], predict(model, rgb, POST))
    model3 = _model(ndim=3, factor=(1, 4, 4), spacing=DEFAULT_SPACING_3D)
    (image3, meta3, _), _ = _core.sample_nuclei_3d()
    image3 = image3[:6, :48, :40]
    (labels, meta, _), = _core.segment(image3, model3, POST, scale=meta3["scale"])
    np.testing.assert_array_equal(labels, predict(model3, image3, POST))
    assert meta["scale"] == list(DEFAULT_SPACING_3D)


def test_segment_resamples_a_layer_at_another_spacing():
    model = _model(spacing=(1.0, 1.0))
    image = _core.sample_nuclei_2d()[0][0][:64, :60]
    (labels, meta, _), (votes, vmeta, _) = _core.segment(image, model, POST, scale=(0.5, 0.5), with_votes=True)
    assert labels.shape == image.shape and meta["scale"] == [0.5, 0.5]
    assert votes.shape == (32, 30) and vmeta["scale"] == [1.0, 1.0]  # on the model's grid
    coarse = predict(model, _core._resample(image, (32, 30), order=1), POST)
    np.testing.assert_array_equal(labels, _core._resample(coarse, (64, 60), order=0))
    assert set(np.unique(labels)) == set(np.unique(coarse))


def test_segment_and_train_reject_bad_layers(tmp_path):
    with pytest.raises(ValueError, match="segments 2D images"):
        _core.segment(np.zeros((4, 16, 16), np.float32), _model(), POST)
    request = _core.TrainRequest(out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="draw at least one object"):
        _core.train_on_layer(np.zeros((32, 32)), np.zeros((32, 32), int), request)
    with pytest.raises(ValueError, match="spatial shape"):
        _core.train_on_layer(np.zeros((32, 32)), np.ones((32, 31), int), request)


def test_train_on_a_layer_writes_a_usable_checkpoint(tmp_path):
    (image, _, _), (labels, _, _) = _core.sample_nuclei_2d()
    request = _core.TrainRequest(out_dir=str(tmp_path / "run"), epochs=2, steps_per_epoch=2, margin=4.0, groups=2,
                                 channels_per_group=4, iterations=2)
    steps = _core.training_progress(image[:96, :96], labels[:96, :96], request)
    updates = []
    try:
        while True:
            updates.append(next(steps))
    except StopIteration as stop:
        result = stop.value
    assert [(u["epoch"], u["step"], u["steps"]) for u in updates] == [(1, 1, 4), (1, 2, 4), (2, 3, 4), (2, 4, 4)]
    assert updates[-1]["eta_seconds"] == 0 and all(u["eta_seconds"] >= 0 for u in updates)
    assert "epoch 1/2" in _core.describe_progress(updates[0])
    assert result.best_checkpoint.is_file()
    assert _core.decoding_defaults(result.best_checkpoint)["margin"] == 4.0
    # A second training into the same folder would silently replace the model: refused.
    with pytest.raises(ValueError, match="already holds a trained model"):
        _core.train_on_layer(image[:96, :96], labels[:96, :96], request)


def test_each_training_gets_a_new_run_folder(tmp_path):
    first = _core.default_run_dir(tmp_path)
    assert first.endswith("run-001")
    assert _core.default_run_dir(tmp_path, taken=[first]).endswith("run-002")
    (tmp_path / "run-001").mkdir()
    assert _core.default_run_dir(tmp_path).endswith("run-002")


def test_stopping_the_training_generator_stops_the_training(tmp_path):
    (image, _, _), (labels, _, _) = _core.sample_nuclei_2d()
    request = _core.TrainRequest(out_dir=str(tmp_path / "run"), epochs=50, steps_per_epoch=50, groups=2,
                                 channels_per_group=4, iterations=1)
    steps = _core.training_progress(image[:64, :64], labels[:64, :64], request)
    assert next(steps)["step"] == 1
    steps.close()  # what napari's worker.quit() does: the training thread ends at its next step
    assert not (tmp_path / "run" / "run.lock").exists()


# ---- the widgets --------------------------------------------------------------------------------
# napari's viewer needs OpenGL, which Qt's offscreen platform lacks: the widgets are tested as real
# magicgui widgets with real napari layers and worker threads (pytest-qt) against a viewer stand-in
# that records the added layers, and, where an X display exists (Xvfb + Mesa, as CI installs), docked
# in a real viewer (make_napari_viewer).

HAS_NAPARI = all(importlib.util.find_spec(m) is not None for m in ("napari", "pytestqt", "magicgui", "npe2"))
needs_napari = pytest.mark.skipif(not HAS_NAPARI, reason="needs the 'napari' extra and pytest-qt")
needs_viewer = pytest.mark.skipif(not (HAS_NAPARI and HAS_DISPLAY),
                                  reason="a napari viewer needs an X display Qt can open, with OpenGL (install "
                                         "Xvfb and Mesa: pytest-xvfb then starts one)")


class RecordingViewer:
    def __init__(self):
        self.added = []

    def __getattr__(self, name):
        if name.startswith("add_"):
            return lambda data, **meta: self.added.append((name[4:], data, meta))
        raise AttributeError(name)


@needs_napari
def test_manifest_resolves_every_contribution():
    import npe2

    manifest = npe2.PluginManifest.from_distribution("rdcnet")
    assert {w.display_name for w in manifest.contributions.widgets} == {"Segment with RDCNet", "Train RDCNet"}
    for command in manifest.contributions.commands:
        module, name = command.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), name)), command.id
    samples = {s.key: s for s in manifest.contributions.sample_data}
    assert set(samples) == {"nuclei_2d", "nuclei_3d"}


@needs_napari
def test_segment_widget_prefills_and_adds_layers(qtbot, tmp_path):
    from napari.layers import Image

    from rdcnet.napari._widgets import segment_widget

    model = _model()
    post = PostprocessConfig(margin=4.0, min_votes=3, smooth_radius=1, opening_radius=1.0)
    save_checkpoint(tmp_path / "best.pt", model, TrainConfig(margin=4.0, postprocess=post))
    image = _core.sample_nuclei_2d()[0][0][:96, :80]
    widget = segment_widget()
    widget.model_path.value = tmp_path / "best.pt"
    assert (widget.min_distance.value, widget.min_votes.value, widget.opening_radius.value) == (4.0, 3, 1.0)
    viewer = RecordingViewer()
    worker = widget(viewer=viewer, image=Image(image, name="cells"), add_centres=True)
    qtbot.waitUntil(lambda: len(viewer.added) == 2, timeout=60_000)
    assert not worker.is_running
    (kind, labels, meta), (pkind, _, _) = viewer.added
    assert (kind, pkind, meta["name"]) == ("labels", "points", "cells RDCNet labels")
    np.testing.assert_array_equal(labels, predict(model, image, post))


@needs_napari
def test_train_widget_passes_the_drawn_labels(qtbot, tmp_path, monkeypatch):
    from napari.layers import Image, Labels

    from rdcnet.napari._widgets import train_widget

    calls = []

    def fake_train(image, labels, request, scale=None, rgb=False, callback=None):  # the real one is tested above
        calls.append((image, labels, request, rgb))
        callback({"epoch": 1, "epochs": 3, "step": 1, "steps": 21, "loss": 0.5, "eta_seconds": 10.0})
        return types.SimpleNamespace(best_f1=0.5, best_checkpoint=tmp_path / "run" / "best.pt")

    monkeypatch.setattr(_core, "train_on_layer", fake_train)
    (image, _, _), (labels, _, _) = _core.sample_nuclei_2d()
    widget = train_widget()
    widget.out_dir.value = tmp_path / "run"
    widget.epochs.value, widget.steps_per_epoch.value, widget.margin.value = 3, 7, 4.5
    worker = widget(viewer=RecordingViewer(), image=Image(image), labels=Labels(labels))
    assert not widget.call_button.enabled  # no second training while this one runs
    qtbot.waitUntil(lambda: bool(calls) and not worker.is_running, timeout=30_000)
    qtbot.waitUntil(lambda: widget.call_button.enabled, timeout=10_000)
    got_image, got_labels, request, rgb = calls[0]
    assert got_image is image and got_labels is labels and not rgb
    assert (request.out_dir, request.epochs, request.steps_per_epoch, request.margin) == (str(tmp_path / "run"), 3,
                                                                                          7, 4.5)


@needs_viewer
def test_segment_widget_docked_in_a_real_viewer(request, tmp_path):
    from napari.layers import Labels

    make_napari_viewer, qtbot = request.getfixturevalue("make_napari_viewer"), request.getfixturevalue("qtbot")

    model = _model()
    post = PostprocessConfig(margin=4.0, min_votes=3, smooth_radius=1)
    save_checkpoint(tmp_path / "best.pt", model, TrainConfig(margin=4.0, postprocess=post))
    viewer = make_napari_viewer()
    image = _core.sample_nuclei_2d()[0][0][:96, :80]
    layer = viewer.add_image(image, name="cells")
    _, widget = viewer.window.add_plugin_dock_widget("rdcnet", "Segment with RDCNet")
    widget.model_path.value = tmp_path / "best.pt"
    widget.image.value = layer
    widget()
    qtbot.waitUntil(lambda: any(isinstance(lay, Labels) for lay in viewer.layers), timeout=60_000)
    labels = viewer.layers["cells RDCNet labels"]
    np.testing.assert_array_equal(labels.data, predict(model, image, post))
    assert viewer.screenshot(canvas_only=True).shape[-1] == 4  # the canvas renders (OpenGL works)

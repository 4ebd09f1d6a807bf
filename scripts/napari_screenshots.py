"""Screenshots of the napari plugin for the README, taken in a real (headless) napari viewer.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/napari_screenshots.py --out docs/images

Needs the `napari` extra and an X display with OpenGL (Xvfb + Mesa: `apt-get install xvfb
libgl1-mesa-dri`). Trains a small RDCNet on synthetic nuclei first (a few minutes on two CPU cores)
unless `--model best.pt` is given, then opens the plugin's sample data, docks "Segment with RDCNet"
and "Train RDCNet", segments the image and writes `napari-segment.png`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def train_small_model(out_dir: Path, steps: int) -> Path:
    from rdcnet import RDCNet, TrainConfig, train
    from rdcnet.data import nuclei_2d
    from rdcnet.demo import DEMO_MARGIN, DEMO_MODEL
    from rdcnet.postprocess import PostprocessConfig

    pairs = nuclei_2d(12, (128, 128), seed=5)
    config = TrainConfig(out_dir=str(out_dir), margin=DEMO_MARGIN, crop=(96, 96), epochs=4,
                         steps_per_epoch=max(1, steps // 4), device="cpu",
                         postprocess=PostprocessConfig(margin=DEMO_MARGIN, min_votes=5, smooth_radius=1))
    return train(RDCNet(**DEMO_MODEL), pairs[:10], pairs[10:], config).best_checkpoint


def wait_for(condition, timeout: float = 600.0) -> None:
    from qtpy.QtWidgets import QApplication

    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError("the widget did not finish in time")
        QApplication.processEvents()
        time.sleep(0.05)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/images", help="folder for the PNG files (default: %(default)s)")
    parser.add_argument("--model", help="checkpoint to segment with (default: train a small one)")
    parser.add_argument("--steps", type=int, default=1200, help="training steps of the small model")
    args = parser.parse_args(argv)

    import napari
    from napari.layers import Labels
    from qtpy.QtWidgets import QApplication

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else train_small_model(Path(tempfile.mkdtemp()) / "run", args.steps)

    viewer = napari.Viewer(title="rdcnet in napari")
    viewer.window.resize(1500, 900)
    layers = viewer.open_sample("rdcnet", "nuclei_2d")
    image = next(layer for layer in layers if not isinstance(layer, Labels))
    for layer in layers:
        if isinstance(layer, Labels):
            viewer.layers.remove(layer)  # the true labels: not what a user would have
    viewer.window.add_plugin_dock_widget("rdcnet", "Train RDCNet")
    _, segment = viewer.window.add_plugin_dock_widget("rdcnet", "Segment with RDCNet", tabify=True)
    segment.model_path.value = model
    segment.image.value = image
    segment.add_centres.value = True
    segment()
    wait_for(lambda: any(isinstance(layer, Labels) for layer in viewer.layers))
    QApplication.processEvents()
    labels = next(layer for layer in viewer.layers if isinstance(layer, Labels))
    labels.contour = 1  # outlines show the image beneath
    viewer.reset_view()
    for widget in QApplication.allWidgets():  # pop-up notices (e.g. about the Qt binding) over the canvas
        if type(widget).__name__ == "NapariQtNotification":
            widget.close()
    QApplication.processEvents()
    path = out / "napari-segment.png"
    viewer.screenshot(str(path), canvas_only=False)
    print(f"{path}: {int(labels.data.max())} objects segmented with {model}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

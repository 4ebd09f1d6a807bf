"""bioimage.io model packages (spec 0.5) of trained rdcnet models, and loading them back.

A package holds the network twice, as ``pytorch_state_dict`` weights (the state dict of
:class:`rdcnet.RDCNet` with :mod:`rdcnet.export.network` as the architecture source, which needs
only torch) and as ``torchscript`` weights; both map the normalised image (``scale_range``
preprocessing, per channel 1st/99.8th percentile as :func:`rdcnet.data.normalize_image`) to the
embeddings (physical units) and the class probabilities. The decoding to labels is not a network
output: it runs with ``rdcnet_ext`` (parameters in the package's ``config.rdcnet``), or with the
whole-pipeline TorchScript file attached to the package (``rdcnet_pipeline.pt``, see
:func:`rdcnet.export.export_torchscript`). Needs the ``bioimageio`` extra (``bioimageio.spec``;
``bioimageio.core`` to test packages).
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Tuple, Union

import numpy as np
import torch

if TYPE_CHECKING:
    from ..model import RDCNet
    from ..postprocess import PostprocessConfig

__all__ = ["export_bioimageio", "load_bioimageio", "is_bioimageio_package"]

CITATION_TEXT = ("Ortiz R., de Medeiros G., Peters A.H.F.M., Liberali P., Rempfler M.: RDCNet: Instance "
                 "segmentation with a minimalist recurrent residual network. MLMI 2020 (MICCAI workshop)")
CITATION_URL = "https://arxiv.org/abs/2010.00991"
AXES = ("z", "y", "x")
# Files inside the package.
WEIGHTS, TORCHSCRIPT, PIPELINE, ARCHITECTURE = "weights.pt", "network_torchscript.pt", "rdcnet_pipeline.pt", "network.py"


def _require_spec():
    try:
        from bioimageio.spec.model import v0_5
    except ImportError:
        raise ImportError("bioimage.io export needs bioimageio.spec: pip install 'rdcnet[bioimageio]'") from None
    return v0_5


def _cover(image: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """A 2:1 PNG: the (normalised, clipped) image beside its labels in random colours."""
    from PIL import Image

    grey = np.clip(image, 0, 1)
    grey = (np.stack([grey] * 3, -1) * 255).astype(np.uint8)
    colours = np.random.default_rng(0).integers(60, 256, (int(labels.max()) + 1, 3)).astype(np.uint8)
    colours[0] = 0
    Image.fromarray(np.concatenate([grey, colours[labels]], axis=1)).save(path)


def _documentation(model, post, spacing, halo) -> str:
    cfg = model.config
    names = AXES[-cfg.ndim:]
    t = post.foreground_threshold
    rule, mask = (("argmax class != 0", "probabilities[0].argmax(0) != 0") if t is None else
                  (f"1 - P(background) > {t:g}", f"1 - probabilities[0, 0] > {t!r}"))
    tta = (" (tuned with test-time augmentation: `rdcnet predict` and the TorchScript file average the "
           "outputs of the flipped and rotated image)" if post.tta else "")
    return f"""# RDCNet instance segmentation ({cfg.ndim}D)

RDCNet (Ortiz et al. 2020) predicts, for every pixel, the class probabilities (softmax over
{cfg.n_classes} classes, class 0 = background) and an *embedding*: the physical position
({', '.join(names)}; pixel spacing {', '.join(f'{s:g}' for s in spacing)}) of the centre of the
object the pixel belongs to. This package outputs the embedding as `offsets` from the pixel's own
position (embedding = offset + pixel index × spacing), which do not depend on where a tile lies
in the image: tiled (blockwise) prediction is correct. Instances are obtained by decoding the
two outputs, which is not part of the network.

## Tiling
The outputs declare a halo of {', '.join(map(str, halo))} pixels ({', '.join(names)}): the context
the network needs on each side of a tile (its receptive-field overlap; rdcnet's own tiled
prediction uses the same). Whole images are padded by it too (bioimage.io's runtime does so).

## Input
`raw`: axes `b, c, {', '.join(names)}`, {cfg.in_channels} channel(s); any spatial size (a
multiple of the down-sampling factor {list(cfg.factor)} avoids padding). Preprocessing:
per image and channel, the 1st percentile maps to 0 and the 99.8th to 1 (not clipped).

## Decoding (rdcnet_ext)
Foreground = {rule}; Hough votes of the embeddings; centres = vote maxima; each
foreground pixel takes the label of the nearest centre. With the parameters of this model{tta}:

```python
import numpy as np
from rdcnet_ext import ops
# offsets, probabilities: this package's outputs for one image (batch axis first)
position = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(offsets.shape[2:], {list(spacing)!r})],
                                indexing="ij"))
embeddings = (offsets[0] + position).astype(np.float32)
labels = ops.embeddings_to_labels(embeddings, {mask},
                                  min_distance={post.peak_window!r},
                                  spacing={list(spacing)!r}, min_votes={post.min_votes!r},
                                  smooth_radius={post.smooth_radius!r}, max_distance={post.max_distance!r},
                                  opening_radius={post.opening_radius!r})
```

Or, with rdcnet installed: `rdcnet predict image.tif --model this_package.zip --out labels/`.

## Without Python
`{PIPELINE}` (attached) is the whole pipeline (normalisation, network, decoding in pure
torch ops) as one TorchScript file: image (`{', '.join(names)}` or with a channel axis) → int32
labels. It loads in LibTorch (C++) or DJL (Java, e.g. QuPath) and with `torch.jit.load`.
"""


def export_bioimageio(model_or_checkpoint, path: Union[str, Path], postprocess=None,
                      test_image: Optional[np.ndarray] = None, name: Optional[str] = None,
                      authors: Sequence[str] = ("rdcnet user",), validate: bool = True) -> Path:
    """Write a bioimage.io model package (``.zip``).

    Args:
        model_or_checkpoint: an :class:`rdcnet.RDCNet` or a checkpoint path (``best.pt``).
        path: the ``.zip`` to write.
        postprocess: decoding parameters (default: the checkpoint's), stored in ``config.rdcnet``.
        test_image: raw image for the test tensors and the cover (default: a synthetic one of
            :mod:`rdcnet.data.synthetic` for grey models, random for others).
        name, authors: shown on bioimage.io.
        validate: validate the description with bioimageio.spec while packaging.
    """
    v = _require_spec()
    from bioimageio.spec import save_bioimageio_package

    from ..postprocess import PostprocessConfig
    from ..predict import predict
    from .network import __file__ as network_source
    from ..predict import tile_overlap
    from .pipeline import _load, export_torchscript, portable_network, script

    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise ValueError(f"path: expected a .zip file name for the package, got {str(path)!r}")
    model, post = _load(model_or_checkpoint, postprocess)
    post = post or PostprocessConfig()
    model = model.cpu().eval()
    cfg = model.config
    names = AXES[-cfg.ndim:]
    from .pipeline import ScriptableNormalizer

    normalizer = ScriptableNormalizer(cfg.ndim, cfg.in_channels)
    raw = normalizer.channels_first(torch.as_tensor(np.asarray(
        _default_test_image(cfg) if test_image is None else test_image, dtype=np.float32))).numpy()
    # The package's input sizes are multiples of the factor: crop the test image to one.
    keep = [n // f * f for n, f in zip(raw.shape[1:], cfg.factor)]
    smallest = [2 * h + f for h, f in zip(tile_overlap(cfg), cfg.factor)]
    if any(k < m for k, m in zip(keep, smallest)):
        raise ValueError(f"test_image: expected at least {smallest} pixels per axis (the package's smallest input: "
                         f"two halos of {list(tile_overlap(cfg))} and a down-sampling step), got {list(raw.shape[1:])}")
    raw = np.ascontiguousarray(raw[(slice(None),) + tuple(slice(0, n) for n in keep)])
    x = normalizer(torch.from_numpy(raw))
    labels = predict(model, raw if cfg.in_channels > 1 else raw[0], post)
    # Offsets, not embeddings, and the tile context declared as the outputs' halo: bioimage.io
    # runtimes then tile correctly (they pad whole images by the halo too). The test outputs are
    # those of the unpadded test input, as bioimageio.core's model test computes them.
    halo = tile_overlap(cfg)
    net = portable_network(model, relative=True)
    with torch.no_grad():
        emb, prob = net(x[None])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(model.state_dict(), tmp / WEIGHTS)
        script(net).save(str(tmp / TORCHSCRIPT))
        export_torchscript(model, tmp / PIPELINE, post)
        shutil.copyfile(network_source, tmp / ARCHITECTURE)
        np.save(tmp / "test_input.npy", raw[None])
        np.save(tmp / "test_offsets.npy", emb.numpy())
        np.save(tmp / "test_probabilities.npy", prob.numpy())
        _cover(x[0].numpy() if cfg.ndim == 2 else x[0, x.shape[1] // 2].numpy(),
               labels if cfg.ndim == 2 else labels[labels.shape[0] // 2], tmp / "cover.png")
        (tmp / "README.md").write_text(_documentation(model, post, cfg.spacing, halo))

        def space_in(a):
            # A tile holds its halo on both sides and at least one down-sampling step between.
            return v.SpaceInputAxis(id=v.AxisId(names[a]), size=v.ParameterizedSize(
                min=2 * halo[a] + cfg.factor[a], step=cfg.factor[a]), scale=float(cfg.spacing[a]))

        def space_out(a):
            return v.SpaceOutputAxisWithHalo(id=v.AxisId(names[a]), halo=halo[a], size=v.SizeReference(
                tensor_id=v.TensorId("raw"), axis_id=v.AxisId(names[a])), scale=float(cfg.spacing[a]))

        inputs = [v.InputTensorDescr(
            id=v.TensorId("raw"), description="raw image",
            axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(f"channel{c}")
                                                              for c in range(cfg.in_channels)])]
            + [space_in(a) for a in range(cfg.ndim)],
            test_tensor=v.FileDescr(source=tmp / "test_input.npy"),
            preprocessing=[v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(
                axes=[v.AxisId(n) for n in names], min_percentile=1.0, max_percentile=99.8))])]
        outputs = [
            v.OutputTensorDescr(
                id=v.TensorId("offsets"),
                description="per pixel, the vector to its object's centre in axis-scale units "
                            "(embedding = offset + index x scale)",
                axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(n) for n in names])]
                + [space_out(a) for a in range(cfg.ndim)],
                test_tensor=v.FileDescr(source=tmp / "test_offsets.npy")),
            v.OutputTensorDescr(
                id=v.TensorId("probabilities"), description="class probabilities (softmax; class 0 = background)",
                axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(f"class{c}")
                                                                  for c in range(cfg.n_classes)])]
                + [space_out(a) for a in range(cfg.ndim)],
                test_tensor=v.FileDescr(source=tmp / "test_probabilities.npy"),
                data=v.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))]
        version = v.Version(torch.__version__.split("+")[0])
        weights = v.WeightsDescr(
            pytorch_state_dict=v.PytorchStateDictWeightsDescr(
                source=tmp / WEIGHTS, pytorch_version=version,
                architecture=v.ArchitectureFromFileDescr(source=tmp / ARCHITECTURE, callable=v.Identifier(
                    "PortableRDCNet"), kwargs={**cfg.to_dict(), "relative": True})),
            torchscript=v.TorchscriptWeightsDescr(source=tmp / TORCHSCRIPT, pytorch_version=version,
                                                  parent="pytorch_state_dict"))
        descr = v.ModelDescr(
            name=name or f"RDCNet {cfg.ndim}D instance segmentation",
            description="RDCNet: recurrent dilated convolutions predicting class probabilities and instance "
                        "centre embeddings; decode with rdcnet_ext or the attached TorchScript pipeline.",
            authors=[v.Author(name=a) for a in authors],
            cite=[v.CiteEntry(text=CITATION_TEXT, url=CITATION_URL)],
            license=v.LicenseId("MIT"),
            documentation=v.FileDescr(source=tmp / "README.md"),
            covers=[v.FileDescr(source=tmp / "cover.png")],
            attachments=[v.FileDescr(source=tmp / PIPELINE)],
            tags=["rdcnet", "instance-segmentation", f"{cfg.ndim}d", "pytorch", "nuclei"],
            inputs=inputs, outputs=outputs, weights=weights,
            config={"rdcnet": {"model_config": cfg.to_dict(), "postprocess": post.to_dict(),
                               "pipeline": PIPELINE}})
        path.parent.mkdir(parents=True, exist_ok=True)
        save_bioimageio_package(descr, output_path=path, allow_invalid=not validate)
    return path


def _default_test_image(cfg) -> np.ndarray:
    from ..data import nuclei_2d, nuclei_3d

    from ..predict import tile_overlap

    # At least the package's smallest input (two halos and a step), and a few objects.
    smallest = [2 * h + f for h, f in zip(tile_overlap(cfg), cfg.factor)]
    size = [max(64, m) for m in smallest]
    if cfg.ndim == 3:
        size[0] = max(8, smallest[0])
    if cfg.in_channels == 1:
        return (nuclei_2d if cfg.ndim == 2 else nuclei_3d)(1, size, seed=0)[0][0]
    return np.random.default_rng(0).random((cfg.in_channels, *size)).astype(np.float32)


def is_bioimageio_package(path) -> bool:
    """Whether ``path`` is a zip file with an ``rdf.yaml`` or ``bioimageio.yaml``."""
    path = Path(path)
    if not (path.is_file() and zipfile.is_zipfile(path)):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n in z.namelist() for n in ("rdf.yaml", "bioimageio.yaml"))


def load_bioimageio(path, device="cpu", fused=None) -> Tuple["RDCNet", "PostprocessConfig"]:
    """Rebuild the :class:`rdcnet.RDCNet` and its decoding parameters from a package written by
    :func:`export_bioimageio` (its ``config.rdcnet`` and ``pytorch_state_dict`` weights)."""
    from ..checkpoint import model_from_dict, postprocess_from_dict, safe_torch_load

    path = Path(path)
    if not is_bioimageio_package(path):
        raise ValueError(f"model: {path} is not a bioimage.io package (a .zip with an rdf.yaml)")
    _require_spec()
    from bioimageio.spec import load_model_description

    try:
        descr = load_model_description(path, perform_io_checks=False)
    except Exception as exc:  # the spec's validation errors span many lines and types
        raise ValueError(f"model: {path} is not a valid bioimage.io model package "
                         f"({' '.join(str(exc).split())[:200]})") from None
    config = getattr(descr, "config", None)
    extra = (config.model_extra or {}).get("rdcnet") if config is not None else None
    weights = getattr(getattr(descr, "weights", None), "pytorch_state_dict", None)
    if not isinstance(extra, dict) or "model_config" not in extra or weights is None:
        raise ValueError(f"model: {path} is a bioimage.io package but not one written by rdcnet "
                         "(no config.rdcnet / pytorch_state_dict weights)")
    with zipfile.ZipFile(path) as z:
        member = str(weights.source.path if hasattr(weights.source, "path") else weights.source)
        if member not in z.namelist():
            raise ValueError(f"model: {path} names weights {member!r} that the package does not contain")
        state = safe_torch_load(z.read(member), map_location=device, what="bioimage.io weights file",
                                name=f"{path}:{member}")
    return model_from_dict({"model_config": extra["model_config"], "state_dict": state}, path, device, fused), \
        postprocess_from_dict({"postprocess": extra.get("postprocess", {})}, path)

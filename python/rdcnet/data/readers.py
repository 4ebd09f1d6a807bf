"""Readers for the paper's data sets, returning train/validation/test splits in memory.

Every reader returns a :class:`Splits`: ``splits["train"]``, ``splits["val"]`` and
``splits["test"]`` are lists of ``(image, labels)`` NumPy pairs (raw images as
:func:`rdcnet.data.read_image` gives them; labels ``int32`` with 0 = background, > 0 = instance
ids, -1 = undefined), with the file names per split, the voxel spacing and a JSON-able
``metadata`` dict that records how the split was drawn (seed, sizes, source folders) so that a
result can be traced back to its exact test images. Missing or malformed files raise
``FileNotFoundError`` / ``ValueError`` naming the file.

* :func:`read_cvppp` — CVPPP2017 LSC A1: ``plant*_rgb.png`` with ``plant*_label.png`` (palette
  or RGB-coded label PNGs), split randomly 60/20/20 with a fixed, recorded seed (paper Sec. 3.1:
  the A1 test labels are not public, so the 128 training images are re-split).
* :func:`read_monuseg` — MoNuSeg 2018: H&E TIFFs with Aperio ImageScope XML polygons,
  rasterised to instance labels (:func:`rasterize_imagescope_xml`); the 30 training images are
  split 23/7 into train/validation (fixed, recorded seed), the 14 test images are the test split.
* :func:`read_stacks3d` — 3D stacks (e.g. 3D-ORG): TIFF image stacks with TIFF label stacks,
  voxel spacing (default 2 × 0.26 × 0.26 µm, z first), an ``undefined`` label value → -1, split
  by a fixed seed into counts (paper: 32/9/8) or fractions.
* :func:`read_folder_splits` — any image/label folders (one per split, or one split by seed).
* :func:`synthetic_splits` — the built-in synthetic data sets, for trying the pipeline.

Splitting (:func:`split_indices`) permutes the *sorted* file list with
``numpy.random.default_rng(seed)``, so the split depends only on the file names and the seed.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .io import read_image, read_labels

__all__ = [
    "Splits",
    "SPLIT_NAMES",
    "DEFAULT_SPACING_ORGANOID",
    "split_indices",
    "read_cvppp",
    "read_monuseg",
    "read_monuseg_folder",
    "parse_imagescope_xml",
    "rasterize_imagescope_xml",
    "read_stacks3d",
    "read_folder_splits",
    "synthetic_splits",
]

SPLIT_NAMES = ("train", "val", "test")

#: 3D-ORG voxel spacing in µm, (z, y, x) (paper Sec. 3.1: 0.26 × 0.26 × 2 µm).
DEFAULT_SPACING_ORGANOID = (2.0, 0.26, 0.26)

Pair = Tuple[np.ndarray, np.ndarray]


# --------------------------------------------------------------------------------------------
# the result


@dataclass
class Splits:
    """Train/validation/test pairs with their provenance.

    ``pairs[name]``: list of ``(image, labels)``; ``names[name]``: one name per pair (file
    stem); ``files[name]``: ``(image file, label file)`` per pair (strings; the label "file" of
    synthetic data is empty); ``spacing``: physical pixel size per spatial axis (``None`` when
    the data set has no physical units, i.e. pixels); ``metadata``: dataset, seed, split sizes,
    source folders — JSON-serialisable (:meth:`to_json`).

    Indexing like a dict: ``splits["train"]``, ``splits.keys()``, ``splits.items()``.
    """

    pairs: Dict[str, List[Pair]]
    names: Dict[str, List[str]]
    files: Dict[str, List[Tuple[str, str]]]
    spacing: Optional[Tuple[float, ...]] = None
    metadata: dict = field(default_factory=dict)

    def __getitem__(self, key: str) -> List[Pair]:
        if key not in self.pairs:
            raise KeyError(f"no split {key!r}; splits are {list(self.pairs)}")
        return self.pairs[key]

    def __contains__(self, key) -> bool:
        return key in self.pairs

    def keys(self):
        return self.pairs.keys()

    def items(self):
        return self.pairs.items()

    @property
    def train(self) -> List[Pair]:
        return self.pairs.get("train", [])

    @property
    def val(self) -> List[Pair]:
        return self.pairs.get("val", [])

    @property
    def test(self) -> List[Pair]:
        return self.pairs.get("test", [])

    def as_dict(self) -> Dict[str, List[Pair]]:
        """The plain ``{"train": [...], "val": [...], "test": [...]}`` dict."""
        return dict(self.pairs)

    def summary(self) -> str:
        """One line: dataset, split sizes, seed, spacing."""
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.pairs.items())
        seed = self.metadata.get("seed")
        return (f"{self.metadata.get('dataset', 'data')}: {sizes}"
                + (f" (split seed {seed})" if seed is not None else "")
                + (f", spacing {tuple(self.spacing)}" if self.spacing is not None else ""))

    def to_json(self) -> dict:
        """Metadata plus the file names per split (no pixel data)."""
        return {**self.metadata, "spacing": None if self.spacing is None else list(self.spacing),
                "splits": {k: [{"name": n, "image": f[0], "labels": f[1]}
                               for n, f in zip(self.names[k], self.files[k])] for k in self.pairs}}

    def write_json(self, path) -> Path:
        """Write :meth:`to_json` to ``path`` (e.g. ``<run>/splits.json``)."""
        from .._files import atomic_write

        return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(self.to_json(), indent=1) + "\n"))


def _make_splits(items: Sequence[Tuple[str, Pair, Tuple[str, str]]], assignment: Dict[str, Sequence[int]],
                 spacing, metadata) -> Splits:
    pairs, names, files = {}, {}, {}
    for split in SPLIT_NAMES:
        idx = list(assignment.get(split, []))
        pairs[split] = [items[i][1] for i in idx]
        names[split] = [items[i][0] for i in idx]
        files[split] = [items[i][2] for i in idx]
    meta = dict(metadata)
    meta["sizes"] = {k: len(v) for k, v in pairs.items()}
    return Splits(pairs, names, files, None if spacing is None else tuple(float(s) for s in spacing), meta)


# --------------------------------------------------------------------------------------------
# splitting


def split_indices(n: int, sizes: Sequence[Union[int, float]], seed: int = 0,
                  names: Sequence[str] = SPLIT_NAMES, what: str = "data") -> Dict[str, np.ndarray]:
    """Randomly assign ``n`` items to splits: ``{name: sorted indices}``.

    ``sizes``: integer counts summing to ``n`` (e.g. ``(32, 9, 8)``), or fractions summing to 1
    (e.g. ``(0.6, 0.2, 0.2)``): every split but the first gets ``round(fraction · n)`` items and
    the first the rest (128 CVPPP images → 76/26/26). The items are permuted with
    ``numpy.random.default_rng(seed).permutation(n)`` and cut in order.
    """
    sizes = list(sizes)
    if not 1 <= len(sizes) <= len(names):
        raise ValueError(f"split sizes: expected 1 to {len(names)} values ({', '.join(names)}), got {sizes}")
    if any(isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)) for s in sizes):
        raise ValueError(f"split sizes: expected numbers, got {sizes}")
    if any(s < 0 for s in sizes):
        raise ValueError(f"split sizes: expected non-negative values, got {sizes}")
    if all(float(s) == int(s) for s in sizes) and sum(sizes) > 1:
        counts = [int(s) for s in sizes]
        if sum(counts) != n:
            raise ValueError(f"split sizes {tuple(counts)} add up to {sum(counts)} but {what} has {n} items")
    else:
        if not math.isclose(sum(sizes), 1.0, abs_tol=1e-6):
            raise ValueError(f"split fractions {tuple(sizes)} must add up to 1 (or give counts adding up to {n})")
        rest = [int(round(float(f) * n)) for f in sizes[1:]]
        counts = [n - sum(rest)] + rest
        if counts[0] < 0:
            raise ValueError(f"split fractions {tuple(sizes)} do not fit {n} items of {what}")
    if n > 0 and counts[0] < 1:
        raise ValueError(f"split sizes {tuple(counts)} leave no training item in {what} ({n} items)")
    perm = np.random.default_rng(int(seed)).permutation(n)
    out, start = {}, 0
    for name, c in zip(names, counts):
        out[name] = np.sort(perm[start:start + c])
        start += c
    for name in names[len(counts):]:
        out[name] = np.zeros(0, dtype=np.int64)
    return out


def _require_dir(path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what}: no such folder: {path}")
    if not path.is_dir():
        raise ValueError(f"{what}: not a folder: {path}")
    return path


def _check_same_shape(image: np.ndarray, labels: np.ndarray, image_path, label_path) -> None:
    spatial = image.shape[:-1] if image.ndim == labels.ndim + 1 else image.shape
    if spatial != labels.shape:
        raise ValueError(f"image {image_path} (shape {image.shape}) and labels {label_path} "
                         f"(shape {labels.shape}) do not have the same spatial shape")


# --------------------------------------------------------------------------------------------
# CVPPP2017 A1


def read_cvppp(folder, seed: int = 0, fractions: Sequence[float] = (0.6, 0.2, 0.2),
               pattern: str = "plant*_rgb.png") -> Splits:
    """CVPPP2017 leaf segmentation challenge, subset A1 (the paper's 128 images).

    ``folder`` holds ``plantNNN_rgb.png`` (RGB(A), alpha dropped) and ``plantNNN_label.png``
    (palette PNGs whose indices are the leaf ids, or RGB-coded: black = background, each colour
    one leaf; both read by :func:`rdcnet.data.read_labels`); other files (``_fg``, ``_centers``)
    are ignored. The images are split randomly into ``fractions`` (paper Sec. 3.1: 60 % training,
    20 % validation, 20 % test) with ``seed``, recorded in ``metadata`` with the file lists.
    """
    folder = _require_dir(folder, "CVPPP A1")
    images = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not images:
        raise FileNotFoundError(f"CVPPP A1: no {pattern} files in {folder}")
    items = []
    for ip in images:
        key = ip.name[: -len("_rgb.png")] if ip.name.endswith("_rgb.png") else ip.stem
        lp = ip.with_name(f"{key}_label.png")
        if not lp.is_file():
            raise FileNotFoundError(f"CVPPP A1: no label file {lp.name} for {ip} (looked for {lp})")
        image, labels = read_image(ip), read_labels(lp)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"CVPPP A1: expected an RGB image in {ip}, got shape {image.shape}")
        _check_same_shape(image, labels, ip, lp)
        items.append((key, (image, labels), (str(ip), str(lp))))
    assignment = split_indices(len(items), fractions, seed, what=f"CVPPP A1 in {folder}")
    meta = {"dataset": "CVPPP2017 A1", "source": str(folder), "seed": int(seed),
            "fractions": [float(f) for f in fractions]}
    return _make_splits(items, assignment, None, meta)


# --------------------------------------------------------------------------------------------
# MoNuSeg


def parse_imagescope_xml(path) -> List[np.ndarray]:
    """Polygons of an Aperio ImageScope XML file: one float64 ``(N, 2)`` array of ``(x, y)``
    vertex coordinates (pixels) per ``Region``, in file order, over all ``Annotation``
    elements (``<Annotations><Annotation><Regions><Region><Vertices><Vertex X=".." Y=".."/>``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MoNuSeg: annotation file not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"MoNuSeg: {path} is not valid XML ({exc})") from None
    if root.tag != "Annotations" and root.find(".//Annotation") is None:
        raise ValueError(f"MoNuSeg: {path} is not an ImageScope annotation file "
                         f"(root element <{root.tag}>, no <Annotation>)")
    polygons = []
    for r, region in enumerate(root.iter("Region")):
        vertices = region.findall("./Vertices/Vertex")
        xy = np.empty((len(vertices), 2), np.float64)
        for v, vertex in enumerate(vertices):
            try:
                xy[v] = float(vertex.attrib["X"]), float(vertex.attrib["Y"])
            except (KeyError, ValueError):
                raise ValueError(f"MoNuSeg: {path}: region {region.get('Id', r + 1)} has a vertex without "
                                 f"numeric X and Y attributes: {vertex.attrib}") from None
        if not np.all(np.isfinite(xy)):
            raise ValueError(f"MoNuSeg: {path}: region {region.get('Id', r + 1)} has non-finite vertices")
        polygons.append(xy)
    return polygons


def rasterize_imagescope_xml(path, shape: Sequence[int]) -> np.ndarray:
    """Instance labels ``int32 shape`` from an ImageScope XML file: region ``k`` (in file order,
    counting only regions that cover at least one pixel) is filled with id ``k`` using
    :func:`skimage.draw.polygon` (rows = Y, columns = X; vertices clipped to the image).

    Where regions overlap, **later regions overwrite earlier ones** (the file order decides);
    a region fully covered by later ones disappears, and the ids are then renumbered 1..K
    without gaps. Regions with fewer than 3 vertices are skipped.
    """
    from skimage.draw import polygon

    shape = tuple(int(s) for s in shape)
    labels = np.zeros(shape, np.int32)
    next_id = 1
    for xy in parse_imagescope_xml(path):
        if len(xy) < 3:
            continue
        rr, cc = polygon(xy[:, 1], xy[:, 0], shape=shape)
        if rr.size == 0:
            continue
        labels[rr, cc] = next_id
        next_id += 1
    present = np.unique(labels)
    present = present[present > 0]
    if present.size and present.size != present[-1]:
        lut = np.zeros(next_id, np.int32)
        lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
        labels = lut[labels]
    return labels


_MONUSEG_IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


def _monuseg_layout(folder: Path) -> Tuple[Path, List[Path]]:
    """(image folder, folders to look for the XML files in). Handles the official layouts:
    ``<train>/Tissue Images/*.tif`` + ``<train>/Annotations/*.xml`` and ``<test>/*.tif`` +
    ``<test>/*.xml``; also ``images/`` + ``annotations/``."""
    for img_name, ann_name in (("Tissue Images", "Annotations"), ("images", "annotations"),
                               ("Tissue images", "Annotations")):
        if (folder / img_name).is_dir():
            ann = [folder / ann_name, folder / img_name, folder]
            return folder / img_name, [a for a in ann if a.is_dir()]
    return folder, [folder] + [folder / a for a in ("Annotations", "annotations") if (folder / a).is_dir()]


def read_monuseg_folder(folder) -> List[Tuple[str, Pair, Tuple[str, str]]]:
    """All ``(name, (image, labels), (image file, xml file))`` of one MoNuSeg folder, sorted by
    name. Images are RGB (an alpha channel is dropped); labels come from the XML file with the
    same stem (:func:`rasterize_imagescope_xml`)."""
    folder = _require_dir(folder, "MoNuSeg")
    image_dir, ann_dirs = _monuseg_layout(folder)
    images = sorted(p for p in image_dir.iterdir()
                    if p.is_file() and p.suffix.lower() in _MONUSEG_IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"MoNuSeg: no TIFF images in {image_dir}")
    items = []
    for ip in images:
        candidates = [d / (ip.stem + ext) for d in ann_dirs for ext in (".xml", ".XML")]
        xml = next((c for c in candidates if c.is_file()), None)
        if xml is None:
            raise FileNotFoundError(f"MoNuSeg: no annotation file for {ip} (looked for "
                                    f"{', '.join(str(d / (ip.stem + '.xml')) for d in ann_dirs)})")
        image = read_image(ip)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"MoNuSeg: expected an RGB H&E image in {ip}, got shape {image.shape}")
        labels = rasterize_imagescope_xml(xml, image.shape[:2])
        items.append((ip.stem, (image, labels), (str(ip), str(xml))))
    return items


def read_monuseg(train_dir, test_dir=None, n_val: int = 7, seed: int = 0) -> Splits:
    """MoNuSeg 2018 (paper Sec. 3.1): the training folder's images (30 in the challenge) split
    randomly into training and ``n_val`` (7) validation images with ``seed``; the test folder's
    images (14) form the test split (empty when ``test_dir`` is None).

    Folders may use the official layouts (``Tissue Images/`` + ``Annotations/``, or images and
    XML files side by side). Images and label masks are loaded into memory.
    """
    train_items = read_monuseg_folder(train_dir)
    n = len(train_items)
    if not 0 <= int(n_val) < n:
        raise ValueError(f"MoNuSeg: n_val={n_val} must leave at least one of the {n} images in {train_dir} "
                         "for training")
    assignment = split_indices(n, (n - int(n_val), int(n_val)), seed, what=f"MoNuSeg training folder {train_dir}")
    items = list(train_items)
    meta = {"dataset": "MoNuSeg", "source": str(train_dir), "seed": int(seed), "n_val": int(n_val)}
    if test_dir is not None:
        test_items = read_monuseg_folder(test_dir)
        assignment["test"] = np.arange(n, n + len(test_items))
        items += test_items
        meta["test_source"] = str(test_dir)
    return _make_splits(items, assignment, None, meta)


# --------------------------------------------------------------------------------------------
# 3D stacks and generic folders


def _folder_items(folder, label_dir, suffixes, pattern, undefined, ndim: Optional[int], what: str):
    from .dataset import FolderDataset

    folder = _require_dir(folder, what)
    if label_dir is not None:
        _require_dir(label_dir, f"{what} labels")
    ds = FolderDataset(folder, label_dir, pattern=pattern, suffixes=tuple(suffixes), undefined=undefined)
    items = []
    for i, (name, (ip, lp)) in enumerate(zip(ds.names, ds.pairs)):
        image, labels = ds.load(i)
        if ndim is not None and labels.ndim != ndim:
            raise ValueError(f"{what}: expected {ndim}D label stacks, {lp} has shape {labels.shape}")
        if labels.size and labels.min() < 0:
            labels = np.where(labels < 0, np.int32(-1), labels).astype(np.int32)
        items.append((name, (image, labels), (str(ip), str(lp))))
    return items


def read_stacks3d(images, labels=None, spacing: Sequence[float] = DEFAULT_SPACING_ORGANOID,
                  undefined: Optional[int] = None, split: Sequence[Union[int, float]] = (32, 9, 8),
                  seed: int = 0, suffixes: Sequence[str] = ("", ""), pattern: str = "*") -> Splits:
    """3D image stacks (e.g. the paper's 3D-ORG light-sheet organoids).

    ``images``: folder of TIFF stacks ``(Z, Y, X)``; ``labels``: folder of label stacks with
    the same names (default: ``images/labels`` when ``images`` holds ``images/`` and
    ``labels/`` subfolders — see :class:`rdcnet.data.FolderDataset`, also for ``suffixes`` and
    ``pattern``). ``spacing``: voxel size (z, y, x) in µm (paper: 2 × 0.26 × 0.26).
    ``undefined``: the stored label value of *undefined* voxels (ambiguous boundaries), read as
    -1 and ignored by the loss and the metrics; stored negative values are undefined too.
    ``split``: counts (paper: 32/9/8 of 49 stacks) or fractions, drawn with ``seed``.
    """
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or any(not s > 0 for s in spacing):
        raise ValueError(f"3D stacks: spacing must be 3 positive values (z, y, x), got {spacing}")
    items = _folder_items(images, labels, suffixes, pattern, undefined, 3, "3D stacks")
    assignment = split_indices(len(items), split, seed, what=f"3D stacks in {images}")
    meta = {"dataset": "3D stacks", "source": str(images), "labels": None if labels is None else str(labels),
            "seed": int(seed), "split": [float(s) if isinstance(s, float) else int(s) for s in split],
            "undefined": undefined}
    return _make_splits(items, assignment, spacing, meta)


def read_folder_splits(train, val=None, test=None, *, labels: Optional[dict] = None,
                       split: Optional[Sequence[Union[int, float]]] = None, seed: int = 0,
                       spacing: Optional[Sequence[float]] = None, undefined: Optional[int] = None,
                       suffixes: Sequence[str] = ("", ""), pattern: str = "*") -> Splits:
    """Image/label folders of your own data (2D, 2D RGB or 3D; TIFF/PNG).

    Each of ``train``/``val``/``test`` is a folder read with :class:`rdcnet.data.FolderDataset`
    (``images/`` + ``labels/`` subfolders, or images paired with ``labels[split]`` folders).
    With ``split`` (counts or fractions) the *train* folder is split randomly with ``seed``
    into train/val/test instead (``val``/``test`` must then be None).
    """
    labels = dict(labels or {})
    unknown = set(labels) - set(SPLIT_NAMES)
    if unknown:
        raise ValueError(f"labels: unknown split(s) {sorted(unknown)}; expected {SPLIT_NAMES}")
    meta = {"dataset": "folder", "seed": int(seed), "undefined": undefined,
            "source": {k: str(v) for k, v in (("train", train), ("val", val), ("test", test)) if v is not None}}
    if split is not None:
        if val is not None or test is not None:
            raise ValueError("give either split (to split the train folder) or val/test folders, not both")
        items = _folder_items(train, labels.get("train"), suffixes, pattern, undefined, None, "train folder")
        assignment = split_indices(len(items), split, seed, what=f"folder {train}")
        meta["split"] = list(split)
        return _make_splits(items, assignment, spacing, meta)
    items, assignment = [], {}
    for name, folder in (("train", train), ("val", val), ("test", test)):
        if folder is None:
            continue
        got = _folder_items(folder, labels.get(name), suffixes, pattern, undefined, None, f"{name} folder")
        assignment[name] = np.arange(len(items), len(items) + len(got))
        items += got
    return _make_splits(items, assignment, spacing, meta)


def synthetic_splits(kind: str = "nuclei_2d", sizes: Sequence[int] = (8, 2, 2), seed: int = 0,
                     shape: Optional[Sequence[int]] = None, spacing: Optional[Sequence[float]] = None) -> Splits:
    """Synthetic splits from :mod:`rdcnet.data.synthetic` (``nuclei_2d``, ``leaves_2d``,
    ``nuclei_3d``): ``sizes`` images per split, all generated from ``seed`` (the splits never
    share an image)."""
    from . import synthetic

    gens = {"nuclei_2d": synthetic.nuclei_2d, "leaves_2d": synthetic.leaves_2d, "nuclei_3d": synthetic.nuclei_3d}
    if kind not in gens:
        raise ValueError(f"synthetic: unknown kind {kind!r}; choose one of {sorted(gens)}")
    sizes = [int(s) for s in sizes]
    if len(sizes) != 3 or min(sizes) < 0 or sizes[0] < 1:
        raise ValueError(f"synthetic: sizes must be 3 counts (train, val, test) with train >= 1, got {sizes}")
    kwargs = {}
    if shape is not None:
        kwargs["shape"] = tuple(int(s) for s in shape)
    if kind == "nuclei_3d":
        spacing = tuple(spacing) if spacing is not None else synthetic.DEFAULT_SPACING_3D
        kwargs["spacing"] = spacing
    pairs = gens[kind](sum(sizes), seed=seed, **kwargs)
    items = [(f"{kind}_{i:03d}", (img, lab.astype(np.int32)), ("", "")) for i, (img, lab) in enumerate(pairs)]
    bounds = np.cumsum([0] + sizes)
    assignment = {n: np.arange(bounds[i], bounds[i + 1]) for i, n in enumerate(SPLIT_NAMES)}
    meta = {"dataset": f"synthetic {kind}", "seed": int(seed), "sizes_requested": sizes}
    return _make_splits(items, assignment, spacing, meta)

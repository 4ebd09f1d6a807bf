"""Exports of trained rdcnet models for other runtimes.

- :func:`export_torchscript`: the whole pipeline (normalisation, network, decoding) as one
  TorchScript file that LibTorch (C++), DJL (Java, e.g. QuPath) or ``torch.jit.load`` run without
  rdcnet or rdcnet_ext.
- :func:`rdcnet.export.bioimageio.export_bioimageio`: a bioimage.io model package (needs the
  ``bioimageio`` extra).
- :func:`load_model`: a model and its decoding parameters from a checkpoint or such a package.
"""

from .network import PortableRDCNet
from .pipeline import RDCNetPipeline, build_pipeline, export_torchscript, portable_network

__all__ = ["PortableRDCNet", "RDCNetPipeline", "build_pipeline", "export_torchscript", "load_model",
           "portable_network"]


def load_model(path, device="cpu"):
    """(:class:`rdcnet.RDCNet` in eval mode, :class:`rdcnet.postprocess.PostprocessConfig`) from a
    checkpoint or a bioimage.io package: :func:`rdcnet.checkpoint.load_model` (kept here for code
    written against earlier versions)."""
    from ..checkpoint import load_model as load

    return load(path, device=device)

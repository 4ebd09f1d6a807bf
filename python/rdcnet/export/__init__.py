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
    checkpoint (``best.pt``) or a bioimage.io package (``.zip``) written by ``rdcnet export``."""
    if str(path).lower().endswith(".zip"):
        from .bioimageio import load_bioimageio

        return load_bioimageio(path, device=device)
    from ..train import load_checkpoint

    model, post, _ = load_checkpoint(path, device=device)
    return model, post

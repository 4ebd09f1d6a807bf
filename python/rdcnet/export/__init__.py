"""Exports of trained rdcnet models for other runtimes.

- :func:`export_torchscript`: the whole pipeline (normalisation, network, decoding) as one
  TorchScript file that LibTorch (C++), DJL (Java, e.g. QuPath) or ``torch.jit.load`` run without
  rdcnet or rdcnet_ext.
- :func:`export_bioimageio`: a bioimage.io model package (needs the ``bioimageio`` extra).
"""

from .network import PortableRDCNet
from .pipeline import RDCNetPipeline, build_pipeline, export_torchscript, portable_network

__all__ = ["PortableRDCNet", "RDCNetPipeline", "build_pipeline", "export_torchscript", "portable_network"]

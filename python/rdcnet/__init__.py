"""rdcnet: RDCNet instance segmentation for 2D and anisotropic 3D microscopy.

The model (:class:`RDCNet`), its losses, training (:func:`train`), inference (:func:`predict`),
metrics (:mod:`rdcnet.metrics`), data readers and synthetic data (:mod:`rdcnet.data`) and the
``rdcnet`` command line. Post-processing runs on the fast ops of :mod:`rdcnet_ext`.
"""

from . import data, metrics
from .losses import RDCNetLoss, embedding_soft_jaccard_loss, soft_jaccard_loss
from .model import RDCNet, RDCNetConfig, RDCNetOutput
from .postprocess import PostprocessConfig, labels_from_output
from .predict import predict, predict_output
from .checkpoint import load_checkpoint, load_model
from .train import TrainConfig, train

__version__ = "0.1.0"

__all__ = [
    "RDCNet", "RDCNetConfig", "RDCNetOutput", "RDCNetLoss", "soft_jaccard_loss", "embedding_soft_jaccard_loss",
    "PostprocessConfig", "labels_from_output", "predict", "predict_output", "TrainConfig", "train",
    "load_checkpoint", "load_model", "metrics", "data", "__version__",
]

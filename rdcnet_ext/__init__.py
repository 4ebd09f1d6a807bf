"""rdcnet_ext: fast C++/CUDA ops for RDCNet, usable from PyTorch and NumPy.

- :mod:`rdcnet_ext.ops`: the fast ops (Hough voting, peak detection, nearest-centre assignment,
  label-wise opening, and all four in one call; the fused shared stacked dilated convolution
  ``ssdc``, differentiable).
- :mod:`rdcnet_ext.reference`: their pure-PyTorch references, the executable specification.
"""

from . import ops, reference
from ._launch import HAS_CUDA as has_cuda

__version__ = "0.1.0"
__all__ = ["ops", "reference", "has_cuda", "__version__"]

"""dkuxnet: Dual kMaX UX-Net for semi-supervised 3D medical image segmentation.

The pure-Python core of the DKUXNetSegment 3D Slicer extension. It never imports ``slicer``,
``qt`` or ``ctk``; the Slicer module is a thin shell over it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

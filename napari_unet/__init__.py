"""napari-unet: segment cells with a U-Net in napari, correct the masks, fine-tune the model.

Importing this package is cheap; the compute core lives in :mod:`napari_unet.core`
(torch, no Qt), the readers and writers in :mod:`napari_unet.io`, the dock widgets in
:mod:`napari_unet.widgets` and the command line in :mod:`napari_unet.cli`.
"""

__version__ = "0.1.0"

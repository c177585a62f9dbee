"""Bounds of the training settings, one place for the API's checks
(:func:`napari_unet.core.train.finetune`), ``napari-unet train``'s options and Fine-tune's controls
(no torch here: the CLI and the widget read them when they start)."""

#: The smallest patch side taken (smaller patches hold no whole cell and no context).
MIN_PATCH = 32
#: The largest patch side Fine-tune offers (a larger wish is cut to the planes anyway).
MAX_PATCH = 1024
#: The most patches a step takes: about 20 MB a 128 px patch on a CPU (100,000 was killed for memory).
MAX_BATCH = 64
#: Steps of a run given neither steps nor a time budget (the API, ``napari-unet train``) and Fine-tune's
#: *Steps* (they were 200 and 300).
DEFAULT_STEPS = 300

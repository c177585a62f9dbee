"""The panels of the Fine-tune dock widget (:class:`napari_unet.widgets.finetune.FinetuneWidget`).

Each panel is a magicgui ``Container`` with one job; the dock widget stacks them and wires
them together:

- :class:`.slices.CorrectedSlicesPanel`: the image, its masks layer and its corrected slices.
- :class:`.sources.ExtraExamplesPanel`: more examples from other layer pairs or folders.
- :class:`.settings.TrainingSettingsPanel`: base model, new name, steps, time budget, ...
- :class:`.run.TrainingRunPanel`: Start / Stop, progress, status and the live curves
  (:class:`.curves.LiveCurves`); saves the model and says so.
- :class:`.models.ModelsPanel`: rename, delete and export the user's models.
"""

"""Dock widgets (thin: they run core generators in napari thread workers)."""

"""Built-in model files (``*.pt``) shipped inside the package; see MODEL_CARD.md."""

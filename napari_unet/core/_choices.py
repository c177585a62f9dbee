"""Choices the widgets offer as their docks open, named without importing torch (its import takes 2 s
and more: the warm-up thread's, not the window's)."""

from __future__ import annotations

#: Where the network may run: "auto" takes CUDA, then Apple's MPS, then the CPU (see core.device).
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")

"""The one place that decides where the network runs: cuda, then mps, then cpu."""

from __future__ import annotations

import os

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Device names usable on this machine, best first (always ends with "cpu")."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if _mps_available():
        found.append("mps")
    found.append("cpu")
    return found


def select_device(preference: str | torch.device | None = None) -> torch.device:
    """Pick the device: cuda, then mps, then cpu, unless ``preference`` says otherwise.

    Parameters
    ----------
    preference : str, torch.device or None
        None or "auto" picks the best available; "cpu", "cuda", "cuda:1" or "mps" force one.
        The environment variable ``NAPARI_UNET_DEVICE`` overrides "auto".

    Raises
    ------
    ValueError
        If the requested device is unknown or not available here.
    """
    if isinstance(preference, torch.device):
        preference = str(preference)
    pref = (preference or "auto").strip().lower()
    if pref == "auto":
        pref = os.environ.get("NAPARI_UNET_DEVICE", "auto").strip().lower() or "auto"
    if pref == "auto":
        return torch.device(available_devices()[0])
    kind = pref.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"Unknown device {preference!r}: choose one of {', '.join(DEVICE_CHOICES)}.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("Device 'cuda' was requested but no CUDA GPU is available; use 'auto' or 'cpu'.")
    if kind == "mps" and not _mps_available():
        raise ValueError("Device 'mps' was requested but Apple MPS is not available; use 'auto' or 'cpu'.")
    if kind == "cuda" and ":" in pref:
        index = int(pref.split(":")[1])
        if index >= torch.cuda.device_count():
            raise ValueError(f"Device {pref!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    return torch.device(pref)


def describe_device(device: torch.device | str) -> str:
    """Short human-readable description, e.g. "NVIDIA H100 (79 GB)" or "CPU, 8 threads"."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"GPU: {props.name} ({props.total_memory / 1e9:.0f} GB)"
    if device.type == "mps":
        return "GPU: Apple MPS"
    return f"CPU, {torch.get_num_threads()} threads"


def free_memory_bytes(device: torch.device | str) -> int | None:
    """Free memory on a CUDA device in bytes, or None where it cannot be known."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return None

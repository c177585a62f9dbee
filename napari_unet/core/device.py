"""The one place that decides where the network runs: cuda, then mps, then cpu."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

import torch

from ._choices import DEVICE_CHOICES  # (named there, without torch)


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
    follow_cpu_quota()
    if isinstance(preference, torch.device):
        preference = str(preference)
    pref = (str(preference) if preference is not None else "auto").strip().lower() or "auto"
    asked = f"Device {pref!r}"  # what the messages name: the argument, or the environment variable
    fix = "use 'auto' or 'cpu'"
    if pref == "auto":
        pref = os.environ.get("NAPARI_UNET_DEVICE", "auto").strip().lower() or "auto"
        asked = f"NAPARI_UNET_DEVICE={pref!r}"
        fix = "unset NAPARI_UNET_DEVICE or set it to 'auto' or 'cpu'"
    if pref == "auto":
        return torch.device(available_devices()[0])
    kind, _, number = pref.partition(":")  # ("mps:0", "cpu:0": a model's or a tensor's device given back)
    if kind not in ("cpu", "cuda", "mps") or (number and not number.isdigit()):
        raise ValueError(f"{asked} is not a device: choose one of {', '.join(DEVICE_CHOICES)}"
                         + (f" ({fix})." if asked.startswith("NAPARI") else "."))
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{asked} was requested but no CUDA GPU is available; {fix}.")
    if kind == "mps" and not _mps_available():
        raise ValueError(f"{asked} was requested but Apple MPS is not available; {fix}.")
    if kind == "cuda" and number and int(number) >= torch.cuda.device_count():
        raise ValueError(f"{asked} does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    if kind != "cuda" and number and int(number) != 0:
        raise ValueError(f"{asked} does not exist: this machine has one {'CPU' if kind == 'cpu' else 'Apple GPU'} device.")
    return torch.device(pref if kind == "cuda" else kind)


#: Whether :func:`follow_cpu_quota` looked, in each thread (once: a thread count set later, by a user or a
#: script, stays; in each thread: with OpenMP, a count set in a worker thread left the window's at every core).
_QUOTA_FOLLOWED = threading.local()


def follow_cpu_quota() -> None:
    """Lower torch's CPU threads to the cores a control group's CPU quota gives this process (once, and
    only lower; not where ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` says how many). torch starts one
    thread per core of the machine: in a Slurm job or ``docker --cpus 2`` on a 64-core node, 64 threads
    shared two cores' time, and training and the torch engine ran slower than on one thread (ONNX
    Runtime's threads already follow :func:`napari_unet.core.engine.cpu_threads`)."""
    if getattr(_QUOTA_FOLLOWED, "done", False):
        return
    _QUOTA_FOLLOWED.done = True
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        return
    from .engine import cpu_threads

    allowed = cpu_threads()
    if torch.get_num_threads() > allowed:
        torch.set_num_threads(allowed)


#: Held while the network works on Apple's GPU (see :func:`device_lock`).
_MPS_LOCK = threading.RLock()


def device_lock(device: torch.device | str) -> Any:
    """A lock to hold while the network works on ``device`` (a forward pass, an optimiser step): on
    Apple's GPU (MPS) two threads running at once abort the process inside Metal, with no Python error
    (pytorch/pytorch#197805: Segment while Fine-tune trains, napari closed and unsaved corrections
    lost); there they take turns, tile by tile and step by step. Nothing to hold on other devices."""
    return _MPS_LOCK if torch.device(device).type == "mps" else contextlib.nullcontext()


def module_lock(module: torch.nn.Module) -> Any:
    """:func:`device_lock` of the device ``module``'s weights are on (none: the CPU's, nothing held)."""
    first = next(iter(module.parameters()), None)
    return device_lock(first.device if first is not None else "cpu")


def empty_cache(device: torch.device | str) -> None:
    """Give the memory torch's allocator holds unused on ``device`` (a GPU) back to it, after running
    out of memory (the next try then finds it). Nothing to do on the CPU."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.empty_cache()
    elif kind == "mps":
        with device_lock(device):
            torch.mps.empty_cache()


def cuda_has_fast_bf16(device: torch.device | str) -> bool:
    """Whether the CUDA GPU ``device`` computes bfloat16 in hardware (compute capability 8.0 on:
    Ampere, Hopper...; ROCm's GPUs say so themselves). ``torch.cuda.is_bf16_supported()`` says yes
    on every CUDA GPU (it emulates bf16 on a T4 or V100, slowly) and asks the current device, not
    this one: those GPUs get fp16 with a GradScaler."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if getattr(torch.version, "hip", None):
        return bool(torch.cuda.is_bf16_supported())
    index = device.index if device.index is not None else torch.cuda.current_device()
    return tuple(torch.cuda.get_device_capability(index)) >= (8, 0)


#: describe_device's words for each CUDA GPU already asked about (index -> words).
_CUDA_WORDS: dict[int, str] = {}


def describe_device(device: torch.device | str) -> str:
    """Short human-readable description, e.g. "NVIDIA H100 (79 GB)" or "CPU, 8 threads".

    The first call for a CUDA GPU starts CUDA (a second or more, and its context's memory):
    :func:`describing_is_quick` tells a GUI when to ask from another thread."""
    device = select_device(device)  # (a GPU that is not there: the clear ValueError, not torch's assertion)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in _CUDA_WORDS:
            props = torch.cuda.get_device_properties(index)
            _CUDA_WORDS[index] = f"GPU: {props.name} ({props.total_memory / 1e9:.0f} GB)"
        return _CUDA_WORDS[index]
    if device.type == "mps":
        return "GPU: Apple MPS"
    threads = torch.get_num_threads()
    return f"CPU, {threads} thread{'' if threads == 1 else 's'}"


def describing_is_quick(choice: torch.device | str | None = None) -> bool:
    """Whether :func:`describe_device` of ``choice`` (None: auto) answers at once: always with a torch
    built without CUDA (the CPU wheels) or for the CPU; with CUDA's torch once it has described a GPU
    (CUDA is started then)."""
    built = bool(getattr(torch.version, "cuda", None) or getattr(torch.version, "hip", None))
    return not built or str(choice or "").strip().lower().startswith("cpu") or bool(_CUDA_WORDS)


def free_memory_bytes(device: torch.device | str) -> int | None:
    """Memory on a CUDA device this process can use, in bytes (the device's free memory and what
    torch's allocator holds unused: after a first run it kept about half the free memory cached, and
    later runs were given half of what was left), or None where it cannot be known."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    return None


#: glibc's mallopt parameters (malloc.h): M_TRIM_THRESHOLD, M_TOP_PAD and M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def give_freed_memory_back() -> bool:
    """Hand the memory this process has freed but glibc still holds back to the system (Linux
    with glibc; ``malloc_trim``). glibc keeps freed blocks from its heap resident, and once a
    large mapped block is freed it serves later blocks of that size from the heap: memory a
    library freed (ONNX Runtime's arena after a big tile) would stay resident in the napari
    window. A few milliseconds. Returns True when it ran.
    """
    import ctypes

    trim = _glibc_function("malloc_trim")
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


def _glibc_function(name: str) -> Any:
    """A function of the C library on Linux (a ctypes function), None where there is none of that
    name (not Linux, or not glibc: musl has no mallopt)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def keep_freed_memory(trim_threshold: int = 1 << 30, top_pad: int = 256 << 20, mmap_threshold: int = 32 << 20) -> bool:
    """Let this process keep memory it frees (Linux with glibc) instead of handing it back at once.

    A training step on the CPU allocates and frees the same large buffers (activations,
    gradients, patches) every time; by default glibc returns freed memory at the top of the heap
    to the system, and the next step maps it again and the kernel zeroes every page: system time
    that was a sixth of a training step on a 2-core machine (benchmarks/RESULTS.md). Raising
    the trim threshold and the top padding keeps those pages; the mmap threshold must be set with
    them (to glibc's largest, 32 MB on 64-bit), as setting either of the others fixes it at its
    128 kB start, and every buffer above that would be mapped and zeroed each time (slower than
    not tuning at all). For processes that end after training (``napari-unet train``, the training
    script), not for the long-lived napari window, which would keep its largest footprint.
    Returns True when the setting took effect.
    """
    import ctypes

    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, int(value)) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold), (_M_TOP_PAD, top_pad)))

"""Inference engines: the network through ONNX Runtime on the CPU, or through torch.

``engine="auto"`` (the default everywhere: GUI, CLI, OME-Zarr batch, scripts) runs the
network with ONNX Runtime when it runs on the CPU, and with torch on CUDA or MPS.
``"torch"`` and ``"onnx"`` force one; the environment variable ``NAPARI_UNET_ENGINE``
replaces ``"auto"``. Both engines give the same probabilities (to about 1e-6).

The first time a network is used on the CPU it is exported once (batch norm folded into
the convolutions, softmax included, dynamic batch/height/width) with ``torch.onnx`` and
written, atomically, to the user's cache folder (``NAPARI_UNET_CACHE_DIR`` overrides it)
under a key made of the weights' hash, the onnxruntime version and this module's export
version: later runs, other processes and dask workers load that file. A file that cannot be
loaded (damaged) or does not fit the network is rebuilt. Sessions are kept per weights (a
fine-tuned model gets a new key); ``InferenceSession.run`` may be called from any thread.

Where ONNX Runtime cannot run (not installed, the export fails, a GPU device, mixed
precision asked for) torch runs instead and :attr:`EngineChoice.reason` says why, in words
for the GUI's device line and the CLI.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import threading
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unet._atomic import atomic_write
from napari_unet._host import cache_folder

from .device import give_freed_memory_back

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnx")
ENGINE_ENV = "NAPARI_UNET_ENGINE"
#: Part of the cache key: raise it whenever the exported graph changes.
EXPORT_VERSION = 2
ONNX_OPSET = 17
#: Exported networks kept in the cache folder (least recently used ones are deleted).
MAX_CACHED_FILES = 16
#: Sessions kept in memory (one per weights).
MAX_SESSIONS = 4
#: Seconds a network keeps the memory of its runs (ONNX Runtime's arena) after the last one
#: ended: the tiles, planes and passes of one segmentation reuse it (giving it back after
#: every run cost 0.06 s of a 0.22 s 1024 x 1024 run, the next run mapping it again); then
#: it goes back to the OS, so that an idle GUI does not hold the peak of a large tile.
ARENA_KEEP_S = 5.0

__all__ = [
    "ENGINES",
    "EngineChoice",
    "EngineUnavailable",
    "NetworkRunner",
    "OnnxNetwork",
    "RunInterrupt",
    "RunInterrupted",
    "clear_sessions",
    "cpu_threads",
    "describe_engine",
    "onnx_cache_dir",
    "onnx_network",
    "resolve_engine",
    "run_session",
    "weights_key",
]


class EngineUnavailable(RuntimeError):
    """ONNX Runtime cannot run this network here; the message says why (for users)."""


@dataclass(frozen=True)
class EngineChoice:
    """Which engine runs the network, and why torch runs where ONNX Runtime was meant to.

    Attributes
    ----------
    name : {"onnx", "torch"}
        The engine that runs.
    requested : {"auto", "torch", "onnx"}
        What was asked for (after ``NAPARI_UNET_ENGINE``).
    reason : str
        Empty, or why ONNX Runtime does not run although it was asked for (or would have
        been chosen on this CPU): "onnxruntime is not installed (pip install onnxruntime)".
    """

    name: str
    requested: str
    reason: str = ""

    def describe(self) -> str:
        """"ONNX Runtime", "torch", or "torch (ONNX Runtime not used: <reason>)" (or "ONNX Runtime
        (<reason>)": a package whose only weights are ONNX runs on the CPU, whatever the device)."""
        if self.name == "onnx":
            return f"ONNX Runtime ({self.reason})" if self.reason else "ONNX Runtime"
        return f"torch (ONNX Runtime not used: {self.reason})" if self.reason else "torch"

    def fall_back(self, reason: str) -> "EngineChoice":
        return replace(self, name="torch", reason=reason)


def cpu_threads() -> int:
    """Cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where absent), no more
    than a control group's CPU quota allows (``docker --cpus 2`` left every core's thread competing for
    two cores' time)."""
    from napari_unet._memory import cgroup_cpus

    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cores = max(1, os.cpu_count() or 1)
    quota = cgroup_cpus()
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ModuleNotFoundError as exc:
        raise EngineUnavailable("onnxruntime is not installed (pip install onnxruntime)") from exc
    except ImportError as exc:  # installed but broken (e.g. a missing system library)
        raise EngineUnavailable(f"onnxruntime could not be loaded ({str(exc).splitlines()[0]})") from exc
    return onnxruntime


def resolve_engine(engine: str | None, device: torch.device | str, mixed_precision: bool = False) -> EngineChoice:
    """Decide the engine from the request, ``NAPARI_UNET_ENGINE``, the device and onnxruntime.

    Parameters
    ----------
    engine : {"auto", "torch", "onnx"} or None
        None or "auto": ``NAPARI_UNET_ENGINE`` if set, else ONNX Runtime on the CPU and
        torch on CUDA/MPS.
    device : torch.device or str
        Where the model's weights are.
    mixed_precision : bool
        bf16/fp16 autocast was asked for: only torch does that.

    Raises
    ------
    ValueError
        An unknown engine name (given or in ``NAPARI_UNET_ENGINE``).

    Notes
    -----
    Imports onnxruntime (to know whether it is there) but exports nothing: a failing
    export is found at the first forward pass (see :class:`NetworkRunner`).
    """
    requested = (engine or "auto").strip().lower()
    if requested not in ENGINES:
        raise ValueError(f"Unknown inference engine {engine!r}: choose one of {', '.join(ENGINES)}.")
    if requested == "auto":
        env = os.environ.get(ENGINE_ENV, "").strip().lower() or "auto"
        if env not in ENGINES:
            raise ValueError(
                f"{ENGINE_ENV}={os.environ[ENGINE_ENV]!r} is not an inference engine: "
                f"choose one of {', '.join(ENGINES)}."
            )
        requested = env
    if requested == "torch":
        return EngineChoice("torch", requested)
    device = torch.device(device)
    if device.type != "cpu":
        why = "" if requested == "auto" else f"it runs on the CPU only, and the model is on {device.type}"
        return EngineChoice("torch", requested, why)
    if mixed_precision:
        why = "" if requested == "auto" else "it runs in float32, and bf16 was asked for"
        return EngineChoice("torch", requested, why)
    try:
        _import_onnxruntime()
    except EngineUnavailable as exc:
        return EngineChoice("torch", requested, str(exc))
    return EngineChoice("onnx", requested)


def describe_engine(device: torch.device | str, engine: str | None = None) -> str:
    """The engine as the GUI's device line and the CLI show it, e.g. "ONNX Runtime".

    When the last network that was to run through ONNX Runtime could not be exported,
    says so (torch ran it) until a later export works.
    """
    try:
        choice = resolve_engine(engine, device)
    except ValueError as exc:
        return f"torch ({exc})"
    with _LOCK:
        failure = _LAST_EXPORT_FAILURE[0]
    if choice.name == "onnx" and failure:
        choice = choice.fall_back(failure)
    return choice.describe()


# ------------------------------------------------------------------ the cache
def onnx_cache_dir() -> Path:
    """Folder of the exported networks: ``NAPARI_UNET_CACHE_DIR`` or the platform's user cache."""
    return cache_folder("onnx")


def weights_key(net: torch.nn.Module) -> str:
    """SHA-256 (hex, 32 digits) of a network's class, configuration, weights and batch-norm statistics."""
    digest = hashlib.sha256(f"{type(net).__module__}.{type(net).__qualname__}".encode())
    config = getattr(net, "config", None)
    digest.update(json.dumps(config.to_dict() if config is not None else type(net).__name__, sort_keys=True).encode())
    for name, tensor in net.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def _cache_name(key: str, ort_version: str) -> str:
    return f"unet-{key}-ort{ort_version}-v{EXPORT_VERSION}.onnx"


def _prune_cache(folder: Path, keep: Path) -> None:
    """Delete the least recently used exports beyond :data:`MAX_CACHED_FILES`."""
    try:
        files = sorted(folder.glob("unet-*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        for path in files[MAX_CACHED_FILES:]:
            if path != keep:
                path.unlink(missing_ok=True)
    except OSError as exc:  # a read-only or shared cache: keep what is there
        log.debug("could not prune the ONNX cache %s: %s", folder, exc)


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the class axis as exp / sum: ONNX Runtime's Softmax node transposes the
    class axis last first (7% of the whole network's time on 1024 x 1024); this is 30x cheaper."""
    e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
    return e / e.sum(dim=1, keepdim=True)


class _ExportNet(torch.nn.Module):
    """What gets exported: the BN-folded network and the softmax, written for ONNX Runtime.

    For a plain :class:`~napari_unet.core.model.UNet` the first convolution of each
    up-sampling block, conv(concat(skip, up)), becomes conv_skip(skip) + conv_up(up): the
    same function to float rounding, without the Concat node and the layout reorders it
    forces around it (10% less time per forward on the shipped model, one thread).
    Networks with a forward of their own are exported as they are.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        from .model import UNet

        self.net = net
        self.split = type(net).forward is UNet.forward
        self.first = torch.nn.ModuleList()
        self.rest = torch.nn.ModuleList()
        if self.split:
            for up in net.up:
                self.rest.append(torch.nn.Sequential(*list(up.conv)[1:]))  # after the first convolution
                conv = up.conv[0]
                n_skip = conv.in_channels // 2  # torch.cat([skip, up]): the skip's channels first
                on_skip = torch.nn.Conv2d(n_skip, conv.out_channels, conv.kernel_size, padding=conv.padding,
                                          bias=conv.bias is not None)
                on_up = torch.nn.Conv2d(conv.in_channels - n_skip, conv.out_channels, conv.kernel_size,
                                        padding=conv.padding, bias=False)
                with torch.no_grad():
                    on_skip.weight.copy_(conv.weight[:, :n_skip])
                    on_up.weight.copy_(conv.weight[:, n_skip:])
                    if conv.bias is not None:
                        on_skip.bias.copy_(conv.bias)
                self.first.append(torch.nn.ModuleList([on_skip, on_up]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.split:
            return _softmax(self.net(x))
        from .model import center_crop

        net = self.net
        x, skips = net.encode(x)
        for up, (on_skip, on_up), rest, skip in zip(net.up, self.first, self.rest, reversed(skips)):
            u = up.up(x)
            skip = center_crop(skip, u.shape[-2], u.shape[-1])
            x = rest(on_skip(skip) + on_up(u))
        return _softmax(net.head(x))


#: Two exports at once (a package exported under Manage models while Segment's first run exports
#: its network) failed both ways ("GLOBALS.in_onnx_export must be True"), and torch then ran that
#: network for the rest of the session.
_EXPORT_LOCK = threading.Lock()


def export_onnx(net: torch.nn.Module) -> bytes:
    """The network (batch norm folded, softmax added; see :class:`_ExportNet`) as ONNX bytes,
    with dynamic batch, height and width.

    Uses the TorchScript-based ``torch.onnx.export(dynamo=False)``: it needs the ``onnx``
    package only (the dynamo exporter also needs ``onnxscript``).

    Raises
    ------
    EngineUnavailable
        If ``onnx`` is missing or the export fails (the message says which).
    """
    from .predict import inference_net

    try:
        import onnx  # noqa: F401  (torch.onnx writes its protobuf with it)
    except ImportError as exc:
        raise EngineUnavailable("the onnx package is needed once to convert the network (pip install onnx)") from exc
    fused = inference_net(net)
    if next(fused.parameters()).device.type != "cpu":
        raise EngineUnavailable("the network is not on the CPU")
    example = torch.zeros(_small_input(net))
    axes = {0: "batch", 2: "height", 3: "width"}
    buf = io.BytesIO()
    try:  # (one export at a time: torch.onnx's exporter keeps its state in globals)
        with _EXPORT_LOCK, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings: nothing for users
            torch.onnx.export(
                _ExportNet(fused).eval(), (example,), buf, dynamo=False,
                input_names=["image"], output_names=["probabilities"],
                dynamic_axes={"image": axes, "probabilities": axes}, opset_version=ONNX_OPSET,
            )
    except Exception as exc:  # the exporter raises many kinds
        raise EngineUnavailable(f"the network could not be exported to ONNX ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    return buf.getvalue()


# ------------------------------------------------------------------ sessions
class OnnxNetwork:
    """An ONNX Runtime session of one network: (N, C, H, W) float32 in, probabilities out.

    Safe to call from any thread (``InferenceSession.run`` is).
    """

    def __init__(self, session: Any, key: str, path: Path | None, n_classes: int,
                 small_input: tuple[int, int, int, int]) -> None:
        self.session = session
        self.key = key
        self.path = path
        self.n_classes = n_classes
        self._input = session.get_inputs()[0].name
        self._small_input = small_input  # (1, C, H, W) the network takes: the run that releases memory
        self._timer: threading.Timer | None = None
        self._timer_lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, n_classes, H, W) float32 softmax probabilities of a (N, C, H, W) batch.

        The memory of the run is kept for the next one and given back to the OS
        :data:`ARENA_KEEP_S` seconds after the last run (:meth:`release_memory` does it now).
        """
        x = np.ascontiguousarray(batch, dtype=np.float32)
        self._cancel_release()
        try:
            return run_session(self.session, {self._input: x})[0]
        finally:
            self._schedule_release()

    def release_memory(self) -> None:
        """Give the memory ONNX Runtime kept from earlier runs back to the OS (a small run with
        the arena's shrinking on: ~20 ms). Runs in progress keep what they use."""
        self._cancel_release()
        try:
            self.session.run(None, {self._input: np.zeros(self._small_input, np.float32)},
                             _run_options(shrink=True))
        except Exception as exc:  # never worth an error: the memory is only kept longer
            log.debug("Releasing ONNX Runtime's memory failed: %s", exc)
        give_freed_memory_back()  # what the arena freed, glibc may keep resident otherwise

    def _schedule_release(self) -> None:
        # the timer holds the network weakly: a network the session cache dropped is not kept alive
        timer = threading.Timer(ARENA_KEEP_S, _release_from_timer, args=(weakref.ref(self),))
        timer.daemon = True
        with self._timer_lock:
            if self._timer is not None:
                self._timer.cancel()
                _RELEASE_TIMERS.discard(self._timer)
            self._timer = timer
            _RELEASE_TIMERS.add(timer)
        timer.start()

    def _cancel_release(self) -> None:
        with self._timer_lock:
            timer, self._timer = self._timer, None
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()
            _RELEASE_TIMERS.discard(timer)


class RunInterrupted(RuntimeError):
    """An ONNX Runtime run ended before its end by :meth:`RunInterrupt.set`."""


_THIS_THREAD = threading.local()


class RunInterrupt:
    """Ends the ONNX Runtime runs of a job from another thread (a Cancel button).

    A run of the paper's network on one tile takes ~35 s of a laptop's CPU, and a cancel that
    waits for the tile's end waits that long: :meth:`set` ends the runs in progress in the
    threads that are inside :meth:`around` (ONNX Runtime's ``RunOptions.terminate``, checked
    between the graph's nodes), which raise :class:`RunInterrupted`; runs that would begin
    after it raise at once. torch runs are not interrupted (they end with their tile).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._runs: list[Any] = []  # the RunOptions of the runs in progress

    def set(self) -> None:
        with self._lock:
            self._set = True
            for options in self._runs:
                options.terminate = True

    def is_set(self) -> bool:
        return self._set

    @contextlib.contextmanager
    def around(self) -> Iterator[None]:
        """ONNX Runtime runs of this thread within the block are ended by :meth:`set`. Keep the
        block to synchronous work: a generator suspended in it would leave the thread marked."""
        before = getattr(_THIS_THREAD, "interrupt", None)
        _THIS_THREAD.interrupt = self
        try:
            yield
        finally:
            _THIS_THREAD.interrupt = before

    def _begin(self, options: Any) -> None:
        with self._lock:
            if self._set:
                raise RunInterrupted("Stopped before the network ran.")
            self._runs.append(options)

    def _end(self, options: Any) -> None:
        with self._lock:
            self._runs.remove(options)


def check_interrupt(what: str) -> None:
    """Raise :class:`RunInterrupted` when the :class:`RunInterrupt` of this thread is set: long work
    that is not the network's (the watershed of a slide, ~8 s) checks it between its steps, so that
    Cancel (Ctrl+C in the command line) does not wait for its end."""
    interrupt = getattr(_THIS_THREAD, "interrupt", None)
    if interrupt is not None and interrupt.is_set():
        raise RunInterrupted(f"Stopped while {what}.")


def run_session(session: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``session.run`` of an ONNX Runtime session: ended by the thread's :class:`RunInterrupt`
    (:class:`RunInterrupted`), and its running out of memory said as "out of memory" (predict's tile
    loop then shrinks the tiles, as for torch)."""
    interrupt = getattr(_THIS_THREAD, "interrupt", None)
    if interrupt is None:
        options = _run_options(shrink=False)
    else:
        options = _import_onnxruntime().RunOptions()  # its own: terminate ends this run only
        interrupt._begin(options)
    try:
        return session.run(None, feeds, options)
    except Exception as exc:  # onnxruntime's own exception classes
        if interrupt is not None and interrupt.is_set():
            raise RunInterrupted("Stopped while the network ran.") from exc
        text = str(exc)
        if "alloc" in text.lower() or "memory" in text.lower():
            raise RuntimeError(f"ONNX Runtime ran out of memory: {text.splitlines()[0]}") from exc
        raise
    finally:
        if interrupt is not None:
            interrupt._end(options)


_LOCK = threading.RLock()
_SESSIONS: collections.OrderedDict[str, OnnxNetwork] = collections.OrderedDict()
_BY_NET: weakref.WeakKeyDictionary[torch.nn.Module, tuple[Any, OnnxNetwork]] = weakref.WeakKeyDictionary()
_LAST_EXPORT_FAILURE: list[str] = [""]
_FAILED: dict[str, str] = {}  # weights key -> why they could not be exported


_RUN_OPTIONS: dict[bool, Any] = {}
_RELEASE_TIMERS: set[Any] = set()  # threading.Timer threads waiting to release, or releasing


def _run_options(shrink: bool) -> Any:
    """Run options; with ``shrink``, the arena's memory goes back to the OS when the run ends."""
    if shrink not in _RUN_OPTIONS:
        ort = _import_onnxruntime()
        options = ort.RunOptions()
        if shrink:
            options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        _RUN_OPTIONS[shrink] = options
    return _RUN_OPTIONS[shrink]


def _release_from_timer(network_ref: weakref.ref) -> None:
    try:
        network = network_ref()
        if network is not None:
            network.release_memory()
    finally:
        _RELEASE_TIMERS.discard(threading.current_thread())


@atexit.register
def _stop_pending_releases() -> None:
    """No release may start, or still run, in ONNX Runtime while Python shuts down."""
    timers = list(_RELEASE_TIMERS)
    for timer in timers:
        timer.cancel()
    for timer in timers:
        if timer.is_alive():
            timer.join(timeout=2.0)


def _session_options(ort: Any) -> Any:
    options = ort.SessionOptions()
    # the threads torch is given (OMP_NUM_THREADS, torch.set_num_threads: dask's workers get one each, and
    # the device line says torch's), within the cores this process may use
    options.intra_op_num_threads = max(1, min(cpu_threads(), torch.get_num_threads()))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The arena reuses memory between the operators of a run: without it every activation is
    # a fresh allocation the OS maps and zeroes again (1.8x the CPU time of a forward pass,
    # measured on an AVX-512 CPU). It is shrunk at the end of every run (see _RUN_OPTIONS),
    # so the peak, ~0.5 kB per pixel of the largest tile, is not kept by a GUI that sits idle.
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = False  # shapes change from plane to plane
    # No busy-waiting between operators: the cores stay free for napari and other work.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: ORT's warnings are not for users
    return options


def _small_input(net: torch.nn.Module) -> tuple[int, int, int, int]:
    """A (1, C, H, W) input shape ``net`` takes: the one it is exported with."""
    side = max(64, net.valid_input_size(64)) if hasattr(net, "valid_input_size") else 64
    return (1, net.config.in_channels, side, side)


def _open_session(ort: Any, source: bytes | Path, net: torch.nn.Module) -> Any:
    """A session, checked to take and give what ``net`` does (else ValueError)."""
    data = source if isinstance(source, bytes) else str(source)
    session = ort.InferenceSession(data, _session_options(ort), providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    config = net.config
    if (len(inputs) != 1 or len(outputs) != 1 or inputs[0].shape[1] != config.in_channels
            or outputs[0].shape[1] != config.n_classes):
        raise ValueError("the cached network does not fit this model")
    return session


def _fingerprint(net: torch.nn.Module) -> tuple[Any, ...]:
    from .predict import _fingerprint as fingerprint

    return fingerprint(net, False)


def onnx_network(net: torch.nn.Module) -> OnnxNetwork:
    """The ONNX Runtime session of ``net``: from memory, from the cache folder, or exported now.

    Thread-safe; a network whose weights change (fine-tuning) gets a new session.

    Raises
    ------
    EngineUnavailable
        onnxruntime missing, or the network could not be exported (the message says why).
    """
    ort = _import_onnxruntime()
    with _LOCK:
        fingerprint = _fingerprint(net)
        known = _BY_NET.get(net)
        if known is not None and known[0] == fingerprint:
            _LAST_EXPORT_FAILURE[0] = ""
            return known[1]
        key = weights_key(net)
        if key in _FAILED:  # tried once in this process: the same weights fail the same way
            _LAST_EXPORT_FAILURE[0] = _FAILED[key]
            raise EngineUnavailable(_FAILED[key])
        found = _SESSIONS.get(key)
        if found is None:
            try:
                found = _load_or_export(ort, net, key)
            except EngineUnavailable as exc:
                _LAST_EXPORT_FAILURE[0] = _FAILED[key] = str(exc)
                log.warning("ONNX Runtime not used: %s; torch runs the network instead.", exc)
                raise
            _SESSIONS[key] = found
            while len(_SESSIONS) > MAX_SESSIONS:
                _SESSIONS.popitem(last=False)
        _SESSIONS.move_to_end(key)
        _BY_NET[net] = (fingerprint, found)
        _LAST_EXPORT_FAILURE[0] = ""
        return found


def clear_sessions() -> None:
    """Forget the sessions kept in memory and the export failures (the cache folder stays)."""
    with _LOCK:
        _SESSIONS.clear()
        _BY_NET.clear()
        _FAILED.clear()
        _LAST_EXPORT_FAILURE[0] = ""


def _load_or_export(ort: Any, net: torch.nn.Module, key: str) -> OnnxNetwork:
    folder = onnx_cache_dir()
    path = folder / _cache_name(key, ort.__version__)
    n_classes = net.config.n_classes
    if path.is_file():
        try:
            session = _open_session(ort, path, net)
        except Exception as exc:  # damaged, truncated or foreign file: rebuild it
            log.warning("The cached ONNX network %s could not be used (%s); exporting it again.",
                        path.name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        else:
            try:
                os.utime(path)  # most recently used: kept by the pruning
            except OSError:
                pass
            return OnnxNetwork(session, key, path, n_classes, _small_input(net))
    data = export_onnx(net)
    try:
        session = _open_session(ort, data, net)
    except Exception as exc:
        raise EngineUnavailable(f"ONNX Runtime could not load the exported network ({exc})".splitlines()[0]) from exc
    try:
        with atomic_write(path, "wb") as fh:
            fh.write(data)
        _prune_cache(folder, path)
    except OSError as exc:  # read-only cache: run from memory, export again next time
        log.warning("Could not write the ONNX network to the cache folder %s (%s): it runs from memory, exported "
                    "again in each new session (seconds); set NAPARI_UNET_CACHE_DIR to a folder that can be written "
                    "to keep it.", folder, exc)
        path = None
    log.info("Exported the network for ONNX Runtime (%s)", path or "kept in memory")
    return OnnxNetwork(session, key, path, n_classes, _small_input(net))


# ------------------------------------------------------------------ for predict
class NetworkRunner:
    """The engine part of prediction's tile loop: ONNX Runtime when chosen, else torch (None).

    ``probabilities(batch)`` returns the softmax probabilities from ONNX Runtime, or None
    when torch is to run the batch (torch was chosen, or ONNX Runtime could not be used:
    then :attr:`choice` says why; the reason is logged as a warning once per network).
    """

    def __init__(self, net: torch.nn.Module, device: torch.device | str, engine: str | None = None,
                 mixed_precision: bool = False) -> None:
        self.net = net
        self.choice = resolve_engine(engine, device, mixed_precision)
        packaged = getattr(net, "packaged_engine", None)  # a BioImage.IO package's network runs its own weights
        if packaged is not None:
            self.choice = packaged(self.choice)

    @property
    def name(self) -> str:
        return self.choice.name

    def probabilities(self, batch: np.ndarray) -> np.ndarray | None:
        """(N, n_classes, H, W) float32 probabilities of a (N, C, H, W) batch, or None for torch."""
        run_packaged = getattr(self.net, "run_packaged", None)
        if run_packaged is not None:
            return run_packaged(batch, self.choice.name)
        if self.choice.name != "onnx":
            return None
        try:
            network = onnx_network(self.net)
        except EngineUnavailable as exc:  # logged once per network by onnx_network
            self.choice = self.choice.fall_back(str(exc))
            return None
        return network(batch)

    def release_memory(self) -> None:
        """Give the memory ONNX Runtime kept from the runs of this network (its arena, ~0.5 kB a
        pixel of the largest tile) back now rather than :data:`ARENA_KEEP_S` after the last run:
        a plane's post-processing, which follows its last tile, needs memory of its own."""
        if self.choice.name != "onnx" or getattr(self.net, "run_packaged", None) is not None:
            return
        with _LOCK:
            known = _BY_NET.get(self.net)
        if known is not None:
            known[1].release_memory()

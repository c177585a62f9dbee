"""Command line: ``napari-unet {gui,predict,train,models,export} ...``.

Each sub-command lives in its own module with ``add_parser(subparsers)`` and
``run(args) -> int``. User errors print one line and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator

from napari_unet import __version__
from napari_unet._errors import one_line  # noqa: F401  (the commands' one line of an error)

SUBCOMMANDS = ("gui", "predict", "train", "models", "export")
#: ``--device`` is checked by :func:`napari_unet.core.device.select_device` when the command runs
#: (not with argparse choices: building the parser must not import torch).
DEVICE_HELP = "where the network runs: auto (the default: cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[object]:
    """SIGTERM (a cluster job at its time limit, ``kill``) stops a command as Ctrl+C does: the file being
    written is removed, "interrupted" is said (it ended the process at once, leaving hidden temporary
    files and folders half written: masks of a batch, gigabytes for large stacks; a model package).

    Either signal also ends the ONNX Runtime run in progress: Python runs its handlers only once the
    main thread is back from it, which for a tile of the paper's network is ~35 s of a laptop's CPU.
    Yields the :class:`~napari_unet.core.engine.RunInterrupt` that ends them (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    from napari_unet.core.engine import RunInterrupt, RunInterrupted

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    runs = RunInterrupt()
    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        with _signals_set(runs), runs.around():
            yield runs
    except RunInterrupted:  # (ended before Python's handler raised)
        raise KeyboardInterrupt from None
    finally:
        signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def _signals_set(runs: object) -> Iterator[None]:
    """``runs.set()`` on SIGINT or SIGTERM, from a thread that the signal's wake-up byte wakes
    (signal.set_wakeup_fd: written by the C handler at once, whatever the main thread is doing)."""
    import socket

    reader, writer = socket.socketpair()
    writer.setblocking(False)
    try:
        before = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except (ValueError, OSError):  # (not the main thread of the main interpreter)
        reader.close()
        writer.close()
        yield
        return

    def watch() -> None:
        while received := reader.recv(64):
            if signal.SIGINT in received or signal.SIGTERM in received:
                runs.set()

    watcher = threading.Thread(target=watch, name="napari-unet signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(before)
        writer.close()  # (the watcher reads the end of the stream and stops)
        watcher.join(5)
        reader.close()


def _to_devnull(stream: object) -> None:
    """Point ``stream``'s file descriptor at the null device, its reader having stopped (``| head``):
    Python's own flush at exit must not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(devnull, stream.fileno())


class _StopTolerantStream:
    """``sys.stdout`` whose reader may stop (``napari-unet train ... | head -1``): once it has, what
    is written goes nowhere and the command goes on (training was aborted, no model saved, exit 0)."""

    def __init__(self, stream: object) -> None:
        self._stream = stream

    def _guard(self, call: str, *args: object) -> object:
        try:
            return getattr(self._stream, call)(*args)
        except BrokenPipeError:
            _to_devnull(self._stream)
            self._stream = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
            return None

    def write(self, text: str) -> int:
        self._guard("write", text)
        return len(text)

    def flush(self) -> None:
        self._guard("flush")

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _names_printable() -> Iterator[None]:
    """File names that are no UTF-8 (a Latin-1 "café.tif" from an old share or a microscope's PC, which
    Python holds with surrogates) printed with their odd bytes escaped ("a_caf\\udce9.tif"): in a UTF-8
    locale printing one raised, and the batch ended at that file ("'utf-8' codec can't encode…")."""
    changed = []
    for stream in (sys.stdout, sys.stderr):
        errors = getattr(stream, "errors", None)
        if errors == "strict" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")  # (text any reader decodes, as stderr's)
            except (ValueError, OSError):  # (a stream that cannot change: left as it is)
                continue
            changed.append((stream, errors))
    try:
        yield
    finally:
        for stream, errors in changed:
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors=errors)


@contextlib.contextmanager
def _stdout_reader_may_stop() -> Iterator[None]:
    before = sys.stdout
    if before is None:
        yield
        return
    sys.stdout = _StopTolerantStream(before)
    try:
        yield
    finally:
        sys.stdout = before


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-unet",
        description="Segment cells in microscopy images with a U-Net; fine-tune it on corrected labels.",
    )
    parser.add_argument("--version", action="version", version=f"napari-unet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # sub-command not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:  # (from here: a Ctrl+C while torch is imported, seconds on a laptop, is said in one line)
        if argv is None and args.command == "train":
            # run from the command line: the process ends after training, so each step's buffers are
            # kept for the next step (not when main() is called inside another program, e.g. the tests)
            from napari_unet.core.device import keep_freed_memory

            keep_freed_memory()
        with _stdout_reader_may_stop(), _names_printable():
            return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("napari-unet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output went to a reader that stopped (`napari-unet models | head`): no error
        _to_devnull(sys.stdout)
        return 0
    # (ArithmeticError: a training loss that became nan; MemoryError: a device out of memory, said what to lower)
    except (CLIError, ValueError, OSError, ArithmeticError, MemoryError) as exc:
        print(f"napari-unet: error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Training patches: their size for a network, and batches of them sampled ahead of the network.

:class:`PatchGeometry` is the input patch a network takes and the part of it the loss
sees; :class:`PatchSampler` draws batches of augmented patches with their targets from
the training examples, on worker threads that prepare the next batch while the network
trains on this one. Each patch has its own seed drawn from the run's generator, so the
patches are the same with or without threads. scipy.ndimage (the warps, distance transforms and
filters that make a patch) holds the GIL, so threads overlap patches with the network but do not
multiply them: for a GPU, which trains faster than one core makes patches, the sampler can use
worker *processes* instead (``processes=True``; spawned, each given the examples once).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .augment import DARK_BACKGROUND_MEDIAN, AugmentConfig, bright_debris, low_light, sample_patch, saturated
from .examples import TrainingExample
from .optimise import Batch
from .targets import TargetRecipe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PatchGeometry:
    """An input patch of ``in_size`` pixels and the ``out_size`` pixels of output it gives."""

    in_size: int
    out_size: int

    @property
    def crop(self) -> int:
        """Pixels cut from each side of a patch's targets to match the output (valid padding)."""
        return (self.in_size - self.out_size) // 2

    @classmethod
    def for_network(cls, net: torch.nn.Module, patch_size: int, largest: int) -> PatchGeometry:
        """The patch ``net`` takes for a wish of ``patch_size`` pixels, when planes are at most ``largest``.

        The patch is rounded up to a size the network takes, and shrunk to the largest
        plane (plus the network's margin) when all planes are smaller than the wish.
        """
        want = min(int(patch_size), largest + 2 * net.margin)
        in_size = net.valid_input_size(max(want, 1))
        return cls(in_size, net.output_size(in_size))


#: Label value that carries "class unknown" through a patch's augmentation (plane labelled in part).
UNKNOWN = -1


def build_patch(
    example: TrainingExample, seed: int, geometry: PatchGeometry, targets: TargetRecipe, augment: AugmentConfig | None,
    marked: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented patch of ``example`` and its targets: ((C, in, in) image, (out, out) classes, weights).

    An example labelled in part (``example.known``) gives patches centred on a known pixel
    (within a quarter patch), whose unknown pixels weigh nothing in the loss; so do the pixels
    of the bright debris that ``augment.debris_prob`` adds. ``marked``: its
    labels with UNKNOWN where the class is unknown (:func:`marked_labels`), when already made.
    """
    rng = np.random.default_rng(seed)
    if example.known is None:
        img, lab = sample_patch(example.image, example.labels, geometry.in_size, rng, augment,
                                valid=geometry.out_size)
        known = None
    else:
        y, x = _known_pixel(example.known, rng)
        jitter = rng.uniform(-0.25, 0.25, size=2) * geometry.out_size
        centre = (y + 0.5 + jitter[0], x + 0.5 + jitter[1])
        marked = marked_labels(example) if marked is None else marked
        img, lab = sample_patch(example.image, marked, geometry.in_size, rng, augment, centre=centre)
        known = lab != UNKNOWN
    if augment is not None and augment.debris_prob > 0 and rng.random() < augment.debris_prob:
        img, debris = bright_debris(img, lab, rng, augment.debris_brightness,
                                    renormalised=augment.debris_renormalised)
        if debris is not None:
            known = ~debris if known is None else known & ~debris
    if augment is not None and augment.low_light_prob > 0 and rng.random() < augment.low_light_prob:
        reference = _pixel_sample(example.image, rng)
        if np.median(reference) < DARK_BACKGROUND_MEDIAN:  # fluorescence: few photons
            grain = example.scale if augment.low_light_native else 1.0
            img = low_light(img, rng, augment.low_light_photons, reference=reference, grain=grain)
    elif augment is not None and augment.saturated_prob > 0 and rng.random() < augment.saturated_prob:
        rows, cols = np.unravel_index(_pixel_indices(example.image, rng), example.labels.shape)
        reference = np.asarray(example.image)[:, rows, cols]
        if np.median(reference) < DARK_BACKGROUND_MEDIAN:  # fluorescence: an over-exposed camera
            img = saturated(img, rng, augment.saturated_level, reference, np.asarray(example.labels)[rows, cols])
    if known is None:
        cls, wts = targets(lab)
    else:
        cls, wts = targets(np.where(known, lab, 0), known)
    c, n = geometry.crop, geometry.out_size
    if c:
        cls = cls[c : c + n, c : c + n]
        wts = wts[c : c + n, c : c + n]
    return img, cls, wts


def _pixel_indices(image: np.ndarray, rng: np.random.Generator, k: int = 4096) -> np.ndarray:
    """Flat indices of ``k`` pixels of a (C, H, W) image's plane, drawn at random (with repeats)."""
    return rng.integers(0, int(np.prod(np.shape(image)[1:])), size=k)


def _pixel_sample(image: np.ndarray, rng: np.random.Generator, k: int = 4096) -> np.ndarray:
    """(C, k) pixels of a (C, H, W) image, drawn at random (with repeats)."""
    return np.asarray(image).reshape(len(image), -1)[:, _pixel_indices(image, rng, k)]


def marked_labels(example: TrainingExample) -> np.ndarray:
    """The labels of an example labelled in part with UNKNOWN where the class is not known."""
    return np.where(example.known, example.labels, UNKNOWN)


def _known_pixel(known: np.ndarray, rng: np.random.Generator, tries: int = 64) -> tuple[int, int]:
    """A random pixel where ``known`` is True: drawn over the plane until one is (a known part of
    a few percent takes some dozens of draws), else among all of them (no per-patch pass over a
    large plane in the usual case)."""
    h, w = known.shape
    for _ in range(tries):
        y, x = int(rng.integers(h)), int(rng.integers(w))
        if known[y, x]:
            return y, x
    flat = np.flatnonzero(known)
    y, x = divmod(int(flat[int(rng.integers(flat.size))]), w)
    return y, x


#: What a patch process builds from (set once per process by :func:`_start_patch_process`).
_PROCESS_STATE: dict[str, Any] = {}


def _start_patch_process(examples, marked, geometry, targets, augment) -> None:
    _PROCESS_STATE.update(examples=examples, marked=marked, geometry=geometry, targets=targets,
                          augment=augment)
    torch.set_num_threads(1)  # the processes are the parallelism
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the training process's to handle


def _build_in_process(pick: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    st = _PROCESS_STATE
    return build_patch(st["examples"][pick[0]], pick[1], st["geometry"], st["targets"], st["augment"],
                       st["marked"][pick[0]])


class PatchSampler:
    """Batches of ``batch_size`` random patches of ``examples`` (uniform over the examples).

    With ``workers > 0``, threads (or with ``processes``, spawned processes) build the
    patches and the next batch is prepared while the caller trains on the current one.
    Close it (or use it as a context manager) to stop them. Processes are spawned: a script
    that uses them starts its work under ``if __name__ == "__main__":``; each holds a copy of
    the examples (about 750 MB for DSB2018's 450 train images).
    """

    def __init__(
        self,
        examples: Sequence[TrainingExample],
        geometry: PatchGeometry,
        targets: TargetRecipe,
        augment: AugmentConfig,
        batch_size: int,
        rng: np.random.Generator,
        workers: int = 0,
        processes: bool = False,
    ) -> None:
        # (a plane labelled in part where nothing is known has nothing to teach)
        self.examples = [e for e in examples if e.known is None or e.known.any()] or list(examples)
        self._marked = [None if e.known is None else marked_labels(e) for e in self.examples]  # made once
        self.geometry = geometry
        self.targets = targets
        self.augment = augment
        self.batch_size = batch_size
        self.rng = rng
        self.workers = workers
        self.processes = processes
        self._pool: Executor | None = None  # started by the first batch
        self._pending: tuple[list[tuple[int, int]], list[Future]] | None = None  # picks and their patches

    def _picks(self) -> list[tuple[int, int]]:
        # per-patch seeds drawn from the run's generator: the same patches with or without threads
        n = len(self.examples)
        return [(int(self.rng.integers(n)), int(self.rng.integers(2**63 - 1))) for _ in range(self.batch_size)]

    def _build(self, pick: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return build_patch(self.examples[pick[0]], pick[1], self.geometry, self.targets, self.augment,
                           self._marked[pick[0]])

    def next_batch(self, prefetch: bool = True) -> Batch:
        """The next batch; with workers and ``prefetch``, the one after it starts being built."""
        if self.workers <= 0:
            patches = [self._build(p) for p in self._picks()]
        else:
            picks, futures = self._pending if self._pending is not None else self._submit(self._picks())
            self._pending = self._submit(self._picks()) if prefetch else None
            patches = self._results(picks, futures)
        xs, cs, ws = zip(*patches)
        return Batch(np.stack(xs), np.stack(cs), np.stack(ws))

    def _results(self, picks: list[tuple[int, int]], futures: list[Future]) -> list[tuple[np.ndarray, ...]]:
        """The patches of ``futures``; a patch process that died (killed for memory, say) is
        replaced and the same ``picks`` built again (the same patches), at most twice a batch."""
        for attempt in range(3):
            try:
                return [f.result() for f in futures]
            except BrokenProcessPool:
                if attempt == 2:
                    raise
                log.warning("A patch process stopped; starting the patch processes again.")
                ahead = self._pending[0] if self._pending is not None else None
                self.close()
                futures = self._submit(picks)[1]
                if ahead is not None:
                    self._pending = self._submit(ahead)
        raise AssertionError("unreachable")

    def _submit(self, picks: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[Future]]:
        if self._pool is None and self.processes:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_patch_process,
                initargs=(self.examples, self._marked, self.geometry, self.targets, self.augment),
            )
        elif self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="napari-unet-patches")
        build = _build_in_process if self.processes else self._build
        futures: list[Future] = []
        for p in picks:
            try:
                futures.append(self._pool.submit(build, p))
            except BrokenProcessPool as exc:  # a process died while idle: the pool says so here
                failed: Future = Future()
                failed.set_exception(exc)  # (handled where the patches are awaited: _results)
                futures.append(failed)
        return picks, futures

    def close(self) -> None:
        """Stop the workers (patches being built are finished, queued ones dropped).

        A later batch starts them again.
        """
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
        self._pending = None

    def __enter__(self) -> PatchSampler:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

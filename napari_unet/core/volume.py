"""3D objects from a z-stack: the 2D network on planes, 3D instances honouring the voxel size.

:func:`iter_segment_volume` turns a (Z, Y, X) volume into int32 labels whose ids are unique
in the volume (one nucleus = one id over all the planes it spans). Two modes:

``"3d"`` (default)
    Every xy plane runs through core's plane loop (:func:`~napari_unet.core.predict.iter_planes`:
    same tiling, engine and object-size rescaling as 2D). With orthogonal views on (default when
    the voxels are within 2x of isotropic) the yz and xz planes run too, on a square grid of the
    coarser pixel size (see :class:`_SidePlanes`), and the class probabilities of the views are
    averaged (as Cellpose does), a side view weighted by how finely it is sampled
    (:func:`side_view_weight`).
    Instances come from a seeded 3D watershed (:mod:`napari_unet.core.volume_instances`) whose
    smoothing and seed spacing are set in physical units from the object diameter.
``"stitch"``
    Per-plane 2D labels linked across z by overlap (IoU): for stacks too anisotropic for 3D.

Any size: the probabilities of a large volume go to a temporary memory map (deleted at the
end, also on error or cancel), and the watershed runs in overlapping blocks, so memory stays
bounded by a block (see :data:`~napari_unet.core.volume_instances.BLOCK_VOXELS`); ``out`` (a
memory map or zarr array) keeps the labels out of memory too.

Progress and stop work as for 2D: the generator yields :class:`~napari_unet.core.events.Progress`
(and :class:`VolumeNote` for what the user should know, e.g. an assumed voxel size), stops
when closed or when ``should_stop()`` returns True, and *returns* the labels.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet._atomic import reserve_space
from napari_unet._host import process_alive

from .checkpoint import SegmentationModel
from .events import Progress, run_to_end
from .preprocess import ImageError, clipped_at, without_camera_artefacts

log = logging.getLogger(__name__)

MODES = ("3d", "stitch")
#: Orthogonal (yz, xz) views are on by default when dz / dx lies within this factor of 1.
ORTHOGONAL_MAX_ANISOTROPY = 2.0
#: Probability volumes larger than this (bytes, in memory as float32) go to a temporary memory map.
IN_MEMORY_PROBABILITIES = 512 * 2**20
#: Objects measured this flat (depth / width, :func:`~napari_unet.core.volume_instances.object_aspect`)
#: or flatter are named in a note (seeds are spaced at their shape whatever it is).
FLAT_NOTE_ASPECT = 0.7
#: Without a voxel size, objects this flat or flatter in the xy view alone (depth / width, see
#: :data:`FLAT_NOTE_ASPECT`) turn the side views off, as planes 2x further apart than the pixels do
#: (:data:`ORTHOGONAL_MAX_ANISOTROPY`): the side views of an isotropic grid then show the objects
#: squashed, which the network misses (touching balls blurred along z, sampled every 3rd / 4th
#: plane, no voxel size: 3D AP@0.5 0.68 / 0.21 with them, 0.84 / 0.82 without). The blur along z
#: makes them look rounder than they are: flat nuclei of half their width measured 0.77-0.80 and
#: keep the side views; every 3rd plane of round ones 0.57 (benchmarks/RESULTS.md).
XY_FLAT_ASPECT = 0.6
#: Planes of a side view read from the volume at once: at most this many bytes.
SIDE_SLAB_BYTES = 128 * 2**20
#: Stitch mode: a plane's object continues an object of the plane above when their IoU is at least this.
STITCH_IOU = 0.25
#: Side views see the z planes on one background and brightness (see :class:`_PlaneLevels`): a side
#: view's rows are the z planes, whose backgrounds differ (StarDist's synthetic nuclei: 182-192 grey
#: levels, rows offset in every side view) and whose light fades with depth (that stack dimmed to 10%
#: at its deepest plane: 3D AP@0.5 0.633 -> 0.424, xy planes alone 0.567; benchmarks/RESULTS.md "3D
#: stacks: the planes' background and brightness"). The notes say so when the objects' contrast
#: changes by more than this factor over the stack.
LEVEL_RATIO = 1.5
#: ... and the gain of a plane is kept within this factor of 1 (a trend is no reason to amplify noise).
LEVEL_MAX_GAIN = 20.0
#: Pixels a plane's objects (and its background) need for their brightness to be measured.
LEVEL_MIN_PIXELS = 50

__all__ = [
    "MODES", "VolumeNote", "VolumeSized", "check_spacing", "iter_segment_stack_3d", "iter_segment_volume", "segment_volume",
    "side_view_weight", "stitch_plane",
]


@dataclass(frozen=True)
class VolumeNote:
    """Something the user should know about a 3D run (yielded once, before the work)."""

    message: str


@dataclass(frozen=True)
class VolumeSized:
    """The object size a volume's xy planes were segmented at (yielded once a volume, when it is
    known): what Segment's "Diameter used" says after a 3D run (it said nothing)."""

    diameter: float | None  # xy pixels (None: the image's own scale, a model without an object size)
    scale: float  # the planes rescaled by this
    note: str = ""  # about the estimate (said in a VolumeNote too)


#: A voxel size whose sides differ more than this is taken for a mistake (units mixed up: z in
#: metres, x in micrometres); microscopes' z steps are at most a few hundred times their pixels.
MAX_VOXEL_RATIO = 1000.0


#: What the 3D path says when no voxel size is given.
UNKNOWN_SPACING_NOTE = ("The voxel size is unknown: the planes were taken to be as far apart as the pixels "
                        "(isotropic voxels). The planes of most z-stacks are 2-5x further apart: give the voxel "
                        "size (z step, pixel height, pixel width), else the 3D objects may come out cut or merged.")


def check_spacing(spacing: Sequence[float] | None) -> tuple[tuple[float, float, float], bool]:
    """``((dz, dy, dx), given)``: the voxel size as floats, isotropic (1, 1, 1) when None.

    Raises :class:`ImageError` for anything but three positive finite numbers.
    """
    if spacing is None:
        return (1.0, 1.0, 1.0), False
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ImageError(f"The voxel size must be three numbers (dz, dy, dx), got {spacing!r}.") from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ImageError(f"The voxel size must be three positive numbers (dz, dy, dx), got {spacing!r}.")
    if max(values) / min(values) > MAX_VOXEL_RATIO:
        raise ImageError(
            f"The voxel size {values} has sides more than {MAX_VOXEL_RATIO:g}x apart: give all three in "
            "one unit (e.g. micrometres: 2, 0.5, 0.5)."
        )
    return values, True  # type: ignore[return-value]


def _check_volume(volume: Any) -> Any:
    if not hasattr(volume, "shape") or not hasattr(volume, "__getitem__"):
        volume = np.asarray(volume)
    shape = tuple(int(s) for s in volume.shape)
    if len(shape) == 2:
        raise ImageError(
            f"3D objects need a z-stack (Z, Y, X), but this image is a single 2D plane {shape}: "
            "segment it in 2D."
        )
    if len(shape) != 3:
        raise ImageError(
            f"3D objects need one grey (Z, Y, X) volume, got shape {shape}: choose one time point and "
            "one channel first (RGB stacks are not segmented in 3D)."
        )
    if shape[0] < 2:
        raise ImageError(
            f"The z-stack has a single plane (shape {shape}): there is nothing to join in 3D; segment it in 2D."
        )
    if min(shape) < 1:
        raise ImageError(f"The volume is empty (shape {shape}).")
    if min(shape[1:]) < 3:  # (a row or a column of pixels: it failed deep inside with a TypeError)
        raise ImageError(f"The z-stack's planes are {shape[1]} x {shape[2]} pixels (shape {shape}): too narrow for 3D "
                         "objects; segment its planes in 2D.")
    return volume


# --------------------------------------------------------------------- probability store
def _remove_left_behind(folder: str) -> None:
    """Remove the probability folders of 3D runs whose process is gone (killed: SIGKILL, the system out of
    memory), which nothing else removes (tens of GB on a cluster's scratch disk)."""
    if os.name != "posix":
        return
    try:
        names = [n for n in os.listdir(folder) if n.startswith("napari-unet-3d-")]
    except OSError:
        return
    for name in names:
        pid = name[len("napari-unet-3d-"):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


class _ProbabilityStore:
    """Weighted sums of (foreground, interior) probabilities over the views: in memory for small
    volumes, else a float16 memory map in a temporary folder (removed by :meth:`close`)."""

    def __init__(self, shape: tuple[int, int, int], workdir: str | None = None) -> None:
        self.folder: str | None = None
        full = (2, *shape)
        from napari_unet._memory import available_memory

        free = available_memory()  # (a cluster job's limit: 512 MiB of them in memory killed a 1.5 GiB job)
        if 4 * int(np.prod(full)) <= min(IN_MEMORY_PROBABILITIES, IN_MEMORY_PROBABILITIES if free is None else free // 4):
            self.data: np.ndarray = np.zeros(full, dtype=np.float32)
        else:
            parent = workdir or tempfile.gettempdir()
            _remove_left_behind(parent)
            self.data = None  # type: ignore[assignment]  (for close() when the map cannot be made)
            try:
                self.folder = tempfile.mkdtemp(prefix=f"napari-unet-3d-{os.getpid()}-", dir=workdir)
                path = f"{self.folder}/probabilities.npy"
                self.data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=full)
                with open(path, "r+b") as fh:  # its blocks taken now: a full disk is an error, not a SIGBUS
                    reserve_space(fh, os.path.getsize(path), parent)  # (a folder: asked for its free space)
            except OSError as exc:
                self.close()
                # (the folder named is the temporary folder, not the run's own one, which is gone by then)
                message = exc.strerror or str(exc)  # (reserve_space's names the folder; the system's do not)
                where = "" if str(parent) in message else f", in {parent}"
                hint = "" if workdir else "; set TMPDIR to a folder on a disk with room"
                raise ImageError(f"{message} (the 3D probabilities of this volume{where}{hint})") from None
        self.views = 0.0  # the sum of the views' weights

    def add(self, key: tuple[Any, ...], probs: np.ndarray, representation: str, weight: float = 1.0,
            replace: bool = False) -> None:
        """Add the (C, ...) class probabilities of one plane at ``key`` (index of a (Z, Y, X) volume),
        times ``weight`` (the view's); ``replace``: set them instead (the first view, whose planes
        may come twice: see :func:`_iter_3d`)."""
        fg, interior = _foreground_interior(probs, representation)
        if weight != 1.0:
            fg, interior = fg * weight, interior * weight
        if replace:
            self.data[(0, *key)] = fg
            self.data[(1, *key)] = interior
        else:
            self.data[(0, *key)] += fg.astype(self.data.dtype, copy=False)
            self.data[(1, *key)] += interior.astype(self.data.dtype, copy=False)

    def close(self) -> None:
        data, self.data = self.data, None  # type: ignore[assignment]
        if isinstance(data, np.memmap):
            data._mmap.close()  # type: ignore[attr-defined]
        del data
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def _foreground_interior(probs: np.ndarray, representation: str) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, interior) probability planes of (C, ...) class probabilities."""
    if representation == "bg-interior-boundary":
        return probs[1] + probs[2], probs[1]
    return probs[1], probs[1]  # "foreground": the foreground is its own interior


# --------------------------------------------------------------------- side views
class _SidePlanes:
    """The yz (``axis=2``) or xz (``axis=1``) planes of a (Z, Y, X) volume as a stack of 2D
    planes (N, H, W) on a square pixel grid: the coarser of the two pixel sizes, dz and dx
    (``z_factor`` = dz / dx). Planes further apart than the pixels (``z_factor`` > 1) keep their
    z samples and the in-plane axis is shrunk (with an anti-aliasing filter) to the z step;
    planes closer than the pixels are shrunk in z. Nothing is interpolated up: the z samples
    stretched to the xy pixel size (as before) gave a plane whose noise and edges ran in streaks
    along z while the other axis stayed sharp, an image unlike any the 2D network was trained
    on; at dz = 2 dx on StarDist's synthetic nuclei its probabilities turned the 3D result from
    0.62 (xy planes alone) to 0.10. The network's own rescaling (to the model's object size)
    then treats both axes of the plane alike, as for an xy plane.

    Reads the volume in slabs of neighbouring planes (lazy arrays chunked by z plane are not
    read once per side plane) and keeps one slab. ``levels``: (background, gain) of each z plane
    (:meth:`_PlaneLevels.levels`), applied to its row of every side plane.
    """

    def __init__(self, volume: Any, axis: int, z_factor: float,
                 levels: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.volume, self.axis, self.z_factor, self.levels = volume, axis, z_factor, levels
        nz, ny, nx = (int(s) for s in volume.shape)
        self.n = nx if axis == 2 else ny
        self.width = ny if axis == 2 else nx
        self.nz = nz
        if z_factor > 1:  # planes further apart than the pixels: the pixels to the z step
            self.plane_shape = (nz, max(1, int(round(self.width / z_factor))))
        else:  # planes closer than the pixels: z to the pixel size
            self.plane_shape = (max(1, int(round(nz * z_factor))), self.width)
        #: the plane's pixel size in xy pixels (>= 1): side-view diameters are xy diameters over it
        self.pixel = self.width / self.plane_shape[1]
        self.shape = (self.n, *self.plane_shape)
        self.dtype = volume.dtype
        plane_bytes = nz * self.width * np.dtype(volume.dtype).itemsize
        self.slab = max(1, min(self.n, SIDE_SLAB_BYTES // max(1, plane_bytes)))
        self._cached: tuple[int, np.ndarray] | None = None

    def _plane(self, i: int) -> np.ndarray:
        start = (i // self.slab) * self.slab
        if self._cached is None or self._cached[0] != start:
            stop = min(self.n, start + self.slab)
            key = (slice(None), slice(None), slice(start, stop)) if self.axis == 2 else (
                slice(None), slice(start, stop), slice(None))
            slab = _read(self.volume, key)
            # planes first: (n, Z, W)
            slab = np.moveaxis(slab, self.axis, 0)
            if self.levels is not None:  # each z plane's objects at one brightness
                background, gain = self.levels
                slab = (slab.astype(np.float32) - background[None, :, None]) * gain[None, :, None]
            self._cached = (start, slab)
        plane = self._cached[1][i - start]
        if self.plane_shape != plane.shape:
            from skimage.transform import resize

            # hot pixels out before the plane is resampled: shrunk (anti-aliased) they are no longer
            # isolated, and the plane loop (which takes them out of every plane it reads) would leave them in
            plane = without_camera_artefacts(plane)
            # only ever shrinks (one axis): anti-aliased
            plane = resize(plane.astype(np.float32), self.plane_shape, order=1, anti_aliasing=True,
                           preserve_range=True).astype(np.float32)
        return plane

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        plane = self._plane(int(key[0]))
        return plane[key[1:]] if len(key) > 1 else plane

    def back_to_volume(self, probs: np.ndarray) -> np.ndarray:
        """(C, H, W) probabilities of a side plane on the volume's own grid (C, Z, W)."""
        if tuple(probs.shape[1:]) == (self.nz, self.width):
            return probs
        from .scale import resize_probabilities

        # resize_probabilities works on (C, h, w) planes: z is h here
        return resize_probabilities(probs, (self.nz, self.width))


class _PlaneLevels:
    """The brightness of each z plane's objects and background, measured on what the model found in
    the plane (the xy view: each plane normalised on its own, it holds up when light is lost with
    depth), so that the side views, whose rows are the z planes, can see them at one brightness."""

    def __init__(self, nz: int) -> None:
        self.background = np.full(nz, np.nan)
        self.objects = np.full(nz, np.nan)
        self.pixels = np.zeros(nz)

    def add(self, volume: Any, z: int, probs: np.ndarray, representation: str) -> None:
        """Measures plane ``z`` of ``volume`` (every k-th pixel of a large plane) on its xy probabilities."""
        step = max(1, max(probs.shape[1:]) // 512)
        values = _read(volume, (z, slice(None, None, step), slice(None, None, step))).astype(np.float32)
        foreground = _foreground_interior(probs, representation)[0][::step, ::step]
        on, off = foreground > 0.5, foreground < 0.1
        if np.count_nonzero(on) >= LEVEL_MIN_PIXELS and np.count_nonzero(off) >= LEVEL_MIN_PIXELS:
            self.background[z] = float(np.median(values[off]))
            self.objects[z] = float(np.median(values[on]))
            self.pixels[z] = np.count_nonzero(on)

    def levels(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(background, gain) per z plane, or None when fewer than three planes held objects to
        measure (the planes are then left as they are). The background: each plane's own (planes
        without objects: their nearest neighbours'). The gain follows an exponential trend of the
        objects' contrast with z (a straight line through its logarithm, each plane weighted by its
        object pixels), not each plane's own contrast: the caps of nuclei are dimmer than their
        middles, and brought to one brightness they ran into the nuclei above and below them in the
        side views (0.516 against 0.633 on the synthetic stack)."""
        contrast = self.objects - self.background
        valid = np.isfinite(contrast) & (contrast > 0)
        if np.count_nonzero(valid) < 3:
            return None
        z, known = np.arange(len(contrast)), np.flatnonzero(valid)
        slope, intercept = np.polyfit(known, np.log(contrast[known]), 1, w=np.sqrt(self.pixels[known]))
        trend = np.exp(intercept + slope * z)
        background = np.interp(z, known, self.background[known])
        gain = np.clip(float(np.median(trend)) / trend, 1 / LEVEL_MAX_GAIN, LEVEL_MAX_GAIN)
        return background.astype(np.float32), gain.astype(np.float32)


class _Clipped:
    """A (Z, Y, X) volume read clipped at ``level`` (float32), part by part as asked for."""

    def __init__(self, volume: Any, level: float) -> None:
        self.volume, self.level = volume, np.float32(level)
        self.shape, self.ndim, self.dtype = tuple(volume.shape), len(volume.shape), np.dtype(np.float32)

    def __getitem__(self, key: Any) -> np.ndarray:
        return clipped_at(np.asarray(_read(self.volume, key)), self.level)


def _read(array: Any, key: tuple[slice, ...]) -> np.ndarray:
    part = array[key]
    if hasattr(part, "compute"):  # dask
        part = part.compute()
    return np.asarray(part)


# --------------------------------------------------------------------- progress
class _Stages:
    """One progress bar over the stages of a 3D run, weighted by the voxels each handles."""

    UNITS = 10_000

    def __init__(self, weights: dict[str, float]) -> None:
        self.weights = dict(weights)
        self.starts: dict[str, float] = {}
        self.shares: dict[str, float] = {}
        self._place(list(weights), 0.0)
        self.last = 0  # units reported last: the bar never goes back
        self.start = time.perf_counter()

    def _place(self, names: list[str], at: float) -> None:
        """Stages ``names``, in order, over the part of the bar from ``at`` on, by their weights."""
        total = sum(self.weights[n] for n in names) or 1.0
        span = 1.0 - at
        for name in names:
            self.starts[name] = at
            self.shares[name] = span * self.weights[name] / total
            at += self.shares[name]

    def add_after(self, stage: str, name: str, weight: float) -> None:
        """A stage found to be needed during the run (the xy planes again, clipped), after ``stage``:
        it and the stages after it share what is left of the bar from where it is now."""
        names = list(self.weights)
        i = names.index(stage)
        self.weights = {**{n: self.weights[n] for n in names[: i + 1]}, name: weight,
                        **{n: self.weights[n] for n in names[i + 1:]}}
        self._place([name, *names[i + 1:]], self.last / self.UNITS)

    def event(self, stage: str, fraction: float, message: str, plane: int = 0) -> Progress:
        done = self.starts[stage] + self.shares[stage] * min(max(fraction, 0.0), 1.0)
        self.last = max(self.last, int(round(done * self.UNITS)))
        return Progress(done=self.last, total=self.UNITS, plane=plane,
                        elapsed=time.perf_counter() - self.start, message=message)


def _forward(planes_gen: Generator, stages: _Stages, stage: str, label: str,
             on_result: Callable[[Any], None], n_planes: int | None = None) -> Generator[Progress, None, None]:
    """Run :func:`iter_planes` to the end: progress re-scaled into the stage, results to ``on_result``;
    with ``n_planes``, said as the plane reached alone (a side view's small planes: their last step's
    words, "brought back to the image's size", stood for the whole stage)."""
    from .predict import PlaneResult

    try:
        for item in planes_gen:
            if isinstance(item, PlaneResult):
                on_result(item)
            else:
                said = f"plane {item.plane + 1}/{n_planes}" if n_planes else item.message
                yield stages.event(stage, item.fraction, f"{label}: {said}", item.plane)
    finally:
        planes_gen.close()


# --------------------------------------------------------------------- public
def iter_segment_volume(
    model: SegmentationModel,
    volume: Any,
    *,
    spacing: Sequence[float] | None = None,
    diameter: float | str | None = "auto",
    mode: str = "3d",
    orthogonal: bool | None = None,
    threshold: float | None = None,
    min_size: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    out: Any = None,
    workdir: str | None = None,
    block_voxels: int | None = None,
    **engine_options: Any,
) -> Generator[Progress | VolumeNote, None, Any]:
    """3D instance labels of a (Z, Y, X) volume (generator).

    Parameters
    ----------
    model : SegmentationModel
        A 2D model (e.g. :func:`~napari_unet.core.load_model`'s built-in one).
    volume : array-like
        (Z, Y, X) grey values, Z >= 2; lazy arrays (memory map, zarr, dask) are read plane by
        plane (side views: in slabs).
    spacing : (dz, dy, dx), optional
        Voxel size (any one unit). None: isotropic voxels are assumed, and a :class:`VolumeNote`
        says so.
    diameter : float, "auto", None or "native"
        Object diameter in xy pixels (as for 2D, see :func:`~napari_unet.core.predict.iter_planes`);
        "auto" estimates it on the middle plane and keeps it for every view.
    mode : {"3d", "stitch"}
        "3d": seeded 3D watershed on the (averaged) probabilities; "stitch": per-plane labels
        linked across z by IoU (for very anisotropic stacks).
    orthogonal : bool, optional
        Also run the yz and xz planes (on a square grid of the coarser of dz and dx) and average
        the views, weighted by :func:`side_view_weight` ("3d" mode). Default: on when dz / dx is within 2x of 1 and the stack is deep enough.
    threshold, min_size : optional
        Post-processing; None = the model's own general setting (volumes do not use its settings
        per kind of image). ``min_size`` (pixels of a 2D object at the model's scale) becomes the
        volume of a ball of that cross-section.
    should_stop : callable, optional
        Checked between tiles and blocks; when it returns True,
        :class:`~napari_unet.core.predict.PredictionStopped` is raised.
    out : array-like, optional
        (Z, Y, X) int32 array to write the labels to (memory map, zarr).
    workdir : str, optional
        Folder for the temporary probability memory map of large volumes (default: the system's).
    block_voxels : int, optional
        Voxels per watershed block, halo included (default
        :data:`~napari_unet.core.volume_instances.BLOCK_VOXELS`).
    **engine_options
        ``tile_size``, ``batch_size``, ``device``, ``precision``, ``engine``... as for 2D.

    Yields
    ------
    Progress or VolumeNote
        Progress over the whole run (network passes and post-processing), notes first.

    Returns
    -------
    ndarray
        (Z, Y, X) int32 labels numbered 1..N over the volume; ``out`` if given.

    Raises
    ------
    ImageError
        Not a (Z, Y, X) volume, a single z plane, a bad voxel size, or a bad ``mode``.
    """
    from .instances import _check_args
    from .predict import _prepare

    if mode not in MODES:
        raise ImageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
    volume = _check_volume(volume)
    _prepare(model, volume, False)  # the model is a model, the planes are planes
    from .predict import stop_check

    should_stop = stop_check(should_stop)
    spacing_t, given = check_spacing(spacing)
    threshold, min_size = _check_args(*model.resolve_postprocessing(threshold, min_size))
    shape = tuple(int(s) for s in volume.shape)
    if out is not None and tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {shape}.")
    if out is not None:
        from .predict import check_out_dtype

        check_out_dtype(out, np.int32)
    if not given:
        yield VolumeNote(UNKNOWN_SPACING_NOTE)
    dz, _dy, dx = spacing_t
    anisotropy = dz / dx
    if mode == "stitch":
        return (yield from _iter_stitch(model, volume, diameter, threshold, min_size, should_stop, out,
                                        engine_options))
    if orthogonal is None:
        orthogonal = 1 / ORTHOGONAL_MAX_ANISOTROPY <= anisotropy <= ORTHOGONAL_MAX_ANISOTROPY
        if not orthogonal:
            yield VolumeNote(f"The z planes are {anisotropy:.3g}x the pixel size apart: only xy planes are "
                             "predicted (no yz / xz views).")
    return (yield from _iter_3d(model, volume, spacing_t, diameter, bool(orthogonal), threshold, min_size,
                                should_stop, out, workdir, block_voxels, engine_options, given))


def side_view_weight(z_factor: float) -> float:
    """Weight of a yz or xz view's probabilities against the xy view's (1) in the average:
    dx / dz, the xy view's samples per side-view sample along the coarser axis (1 when the planes
    are no further apart than the pixels).

    A side view of planes further apart than the pixels sees each object in fewer, coarser samples
    than an xy plane does. Weighted 1 (as before), the side views of z-subsampled stacks still
    cost accuracy against weights below 1; on StarDist's synthetic nuclei z-subsampled 1.5x / 2x /
    3x (3D AP@0.5, all three views): weight 1 gave 0.623 / 0.705 / 0.455, dx / dz 0.707 / 0.721
    / 0.531, xy planes alone 0.373 / 0.623 / 0.508; on crowded synthetic balls (two noise
    levels) dx / dz was above weight 1 in five cases of six (benchmarks/RESULTS.md, "3D objects").
    """
    return float(min(1.0, 1.0 / z_factor)) if z_factor > 0 else 1.0


def _middle_first(n: int) -> list[tuple[int]]:
    """Plane order that starts with the middle plane (the object size is estimated on it)."""
    mid = n // 2
    return [(mid,)] + [(i,) for i in range(n) if i != mid]


def _iter_3d(model, volume, spacing, diameter, orthogonal, threshold, min_size, should_stop, out, workdir,
             block_voxels, engine_options, given_spacing=True) -> Generator[Progress | VolumeNote, None, Any]:
    from .predict import OUTLIERS_NOTE, iter_planes
    from .volume_instances import iter_watershed_blocks, object_aspect

    nz, ny, nx = (int(s) for s in volume.shape)
    z_factor = spacing[0] / spacing[2]
    nzr = max(1, int(round(nz * z_factor)))
    weights = {"xy": nz * ny * nx, "yz": nx * nzr * ny if orthogonal else 0.0,
               "xz": ny * nzr * nx if orthogonal else 0.0, "post": 0.3 * nz * ny * nx}
    stages = _Stages(weights)
    store = _ProbabilityStore((nz, ny, nx), workdir)
    found: dict[str, Any] = {}
    levels = _PlaneLevels(nz)
    try:
        def add_xy(result) -> None:
            found["last"] = result  # the size is known by then (the first planes may have been looked at only)
            blank = found.setdefault("blank", set())
            (blank.add if result.blank is not None else blank.discard)(result.index[0])
            if result.clipped is not None:
                found.setdefault("clipped", []).append(result.clipped)
            # planes run while the size was still unknown (too few objects in the middle plane) come
            # again once it is: the later result replaces the earlier (the xy view is the first one)
            store.add((result.index[0],), result.probabilities, result.representation, replace=True)
            if orthogonal:
                levels.add(volume, result.index[0], result.probabilities, result.representation)

        yield from _forward(
            iter_planes(model, volume, rgb=False, by_kind=False, planes=_middle_first(nz), diameter=diameter,
                        labels=False, threshold=threshold, min_size=min_size, should_stop=should_stop,
                        to_model_diameter=True, outliers="measure", **engine_options),
            stages, "xy", "xy planes", add_xy)
        sized = found["last"]
        if found.get("clipped"):
            # a few objects far brighter than the others dimmed the planes through them: the whole stack
            # clipped at one level (plane by plane, the planes at their edges were dimmed half as much,
            # unclipped, and the objects there were cut in z), the xy view again (its size measured again)
            volume = _Clipped(volume, float(np.median(found["clipped"])))
            yield VolumeNote(OUTLIERS_NOTE.replace("the image's", "the stack's"))
            stages.add_after("xy", "xy clipped", weights["xy"])  # (the bar went back to 0 for the xy stage)
            yield from _forward(
                iter_planes(model, volume, rgb=False, by_kind=False, planes=_middle_first(nz),
                            diameter=diameter, labels=False, threshold=threshold,
                            min_size=min_size, should_stop=should_stop, to_model_diameter=True, outliers="off",
                            **engine_options),
                stages, "xy clipped", "xy planes, bright objects clipped", add_xy)
            sized = found["last"]
        store.views += 1
        # (a model without an object size runs at the image's scale: a diameter given still sizes the seeds)
        xy_diameter = sized.diameter if sized.diameter is not None else _given_diameter(diameter)
        if orthogonal and len(found.get("blank", ())) == nz:
            # nothing in any plane (a dark time point, camera noise): the side views would find nothing either
            yield VolumeNote("Every plane of the volume is blank (one value, camera noise alone or no data): "
                             "nothing to segment.")
            orthogonal = False
        yield VolumeSized(sized.diameter, float(sized.scale), sized.note or "")
        if sized.note:
            yield VolumeNote(f"Object diameter: {sized.note}.")
        if orthogonal and xy_diameter and nzr < 2 * xy_diameter:
            yield VolumeNote(f"The stack is only {nzr} px deep (at the xy pixel size), less than two objects "
                             f"of {xy_diameter:.3g} px: only xy planes are predicted (no yz / xz views).")
            orthogonal = False
        xy_aspect, flat_in_xy = None, False
        if orthogonal and not given_spacing:
            xy_aspect = object_aspect(store.data, store.views, spacing, threshold, should_stop)
            flat_in_xy = xy_aspect <= XY_FLAT_ASPECT
            if flat_in_xy:
                yield VolumeNote(f"In the xy planes the objects look {1 / xy_aspect:.2g}x wider than deep: the "
                                 "planes are probably further apart than the pixels. Only xy planes are "
                                 "predicted (no yz / xz views); give the voxel size (z, y, x) to have them.")
                orthogonal = False
        plane_levels = levels.levels() if orthogonal else None
        if plane_levels is not None and (gain := plane_levels[1]).max() > LEVEL_RATIO * gain.min():
            yield VolumeNote(f"The planes' objects differ in brightness up to {gain.max() / gain.min():.2g}x "
                             "(light lost with depth?): the yz / xz views see them at one brightness.")
        sides = ({axis: _SidePlanes(volume, axis, z_factor, plane_levels) for axis in (2, 1)}
                 if orthogonal else {})
        if sides and xy_diameter and xy_diameter < max(side.pixel for side in sides.values()):
            # a side view's pixel is one plane step wide: no object there to segment (nor a diameter)
            yield VolumeNote(f"The objects ({xy_diameter:.3g} px) are narrower than the planes are apart "
                             f"({z_factor:.3g} px): only xy planes are predicted (no yz / xz views).")
            orthogonal = False
        if orthogonal and xy_diameter and any(xy_diameter / side.pixel > min(side.plane_shape) / 2
                                              for side in sides.values()):
            # a narrow stack (31 x 20 px in a side view): its side planes hold less than two objects across,
            # and their typed diameter was refused ("more than half of the image") though 2D segments it
            yield VolumeNote(f"The stack is only {min(ny, nx)} px wide in y or x, less than two objects of "
                             f"{xy_diameter:.3g} px: only xy planes are predicted (no yz / xz views).")
            orthogonal = False
        if orthogonal:
            weight = side_view_weight(z_factor)
            for axis, stage in ((2, "yz"), (1, "xz")):
                side = sides[axis]
                # the side plane's pixels are side.pixel xy pixels wide: its objects measure that much less
                side_diameter: float | str = xy_diameter / side.pixel if xy_diameter else "native"

                def add_side(result, side=side, axis=axis) -> None:
                    probs = side.back_to_volume(result.probabilities)
                    i = result.index[0]
                    key = (slice(None), slice(None), i) if axis == 2 else (slice(None), i, slice(None))
                    store.add(key, probs, result.representation, weight)

                yield from _forward(
                    iter_planes(model, side, rgb=False, by_kind=False, diameter=side_diameter, labels=False,
                                threshold=threshold, min_size=min_size, should_stop=should_stop,
                                to_model_diameter=True, outliers="off", plane_notes=False, **engine_options),
                    stages, stage, f"{stage} planes", add_side, n_planes=int(side.shape[0]))
                store.views += weight
        scale = sized.scale
        object_diameter = xy_diameter if xy_diameter else (model.diameter or _fallback_diameter(ny, nx))
        if flat_in_xy:
            aspect = xy_aspect  # (the views are the xy one alone: measured already, and noted)
        else:
            aspect = object_aspect(store.data, store.views, spacing, threshold, should_stop)
        if aspect <= FLAT_NOTE_ASPECT and not flat_in_xy:
            yield VolumeNote(_flat_note(aspect, given_spacing))
        labels = yield from iter_watershed_blocks(
            store.data, store.views, spacing, object_diameter, threshold,
            _min_volume(min_size, scale, spacing, aspect), out=out, should_stop=should_stop,
            block_voxels=block_voxels, progress=lambda f, msg: stages.event("post", f, msg), aspect=aspect)
        return labels
    finally:
        store.close()


def _given_diameter(diameter: Any) -> float | None:
    """A diameter given in pixels (a number or "12 px"); None for auto, native or a physical size."""
    from .scale import diameter_word, parse_diameter

    if diameter_word(diameter) is not None:
        return None
    try:
        value = parse_diameter(diameter) if isinstance(diameter, str) else diameter
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _fallback_diameter(ny: int, nx: int) -> float:
    """An object diameter when neither the image nor the model tells one (pixels)."""
    return float(max(4.0, min(ny, nx) / 16))


def _flat_note(aspect: float, given_spacing: bool) -> str:
    """What the user should know of objects ``aspect`` times as deep as wide."""
    text = (f"The objects are about {1 / aspect:.2g}x wider than deep (along z): 3D objects are told "
            "apart at that shape.")
    if not given_spacing:
        text += (" If the planes are further apart than the pixels, give the voxel size (z, y, x): "
                 "the side views and object volumes depend on it.")
    return text


def _min_volume(min_size: int, scale: float, spacing: Sequence[float], aspect: float = 1.0) -> int:
    """Voxels of a ball (an ellipsoid ``aspect`` times as deep as wide) whose cross-section is
    ``min_size`` pixels at the model's scale."""
    if not min_size:
        return 0
    dz, dy, dx = spacing
    diameter_px = 2.0 * math.sqrt(min_size / math.pi) / scale  # image pixels (xy)
    d = diameter_px * dx  # physical
    return int(round(math.pi / 6 * d**3 * aspect / (dz * dy * dx)))


# --------------------------------------------------------------------- stitch mode
def _iter_stitch(model, volume, diameter, threshold, min_size, should_stop, out,
                 engine_options) -> Generator[Progress | VolumeNote, None, Any]:
    """Per-plane labels, each object joined to the object of the plane above it overlaps most
    (IoU >= :data:`STITCH_IOU`, one to one), ids unique in the volume."""
    from .predict import iter_planes

    nz, ny, nx = (int(s) for s in volume.shape)
    labels = np.zeros((nz, ny, nx), dtype=np.int32) if out is None else out
    stages = _Stages({"middle": 1.0, "xy": nz - 1.0})
    # the middle plane first, alone: it tells the object size for the others
    mid = nz // 2
    got: dict[int, Any] = {}
    yield from _forward(
        iter_planes(model, volume, rgb=False, by_kind=False, planes=[(mid,)], diameter=diameter, threshold=threshold,
                    min_size=min_size,
                    should_stop=should_stop, **engine_options),
        stages, "middle", "xy planes", lambda r: got.__setitem__(r.index[0], r))
    first = got[mid]
    yield VolumeSized(first.diameter, float(first.scale), first.note or "")
    if first.note:
        yield VolumeNote(f"Object diameter: {first.note}.")
    rest_diameter: float | str = first.diameter if first.diameter else "native"
    state: dict[str, Any] = {"z": 0, "above": None, "next_id": 1}

    def take(result: Any) -> None:
        """Keep a plane's result; link the planes that are next in z order (the middle came first)."""
        got[result.index[0]] = result
        while state["z"] in got:
            plane, state["next_id"] = stitch_plane(got.pop(state["z"]).labels, state["above"], state["next_id"])
            labels[state["z"]] = plane
            state["above"] = plane
            state["z"] += 1

    rest = [(i,) for i in range(nz) if i != mid]
    yield from _forward(
        iter_planes(model, volume, rgb=False, by_kind=False, planes=rest, diameter=rest_diameter, threshold=threshold,
                    min_size=min_size, should_stop=should_stop, **engine_options),
        stages, "xy", "xy planes", take)
    return labels


def stitch_plane(plane: np.ndarray, above: np.ndarray | None, next_id: int) -> tuple[np.ndarray, int]:
    """Relabel one plane's 2D objects: an object whose IoU with an object of ``above`` (the
    previous plane, already relabelled) is at least :data:`STITCH_IOU` takes its id (one to
    one, largest IoU first), the others new ids from ``next_id``. Returns (plane, next free id)."""
    plane = np.asarray(plane)
    n = int(plane.max()) if plane.size else 0
    if n == 0:
        return np.zeros(plane.shape, dtype=np.int32), next_id
    lut = np.zeros(n + 1, dtype=np.int64)
    if above is not None and above.any():
        ids_above, inverse = np.unique(above, return_inverse=True)
        inverse = inverse.reshape(above.shape)
        m = ids_above.size
        overlap = np.bincount(plane.ravel().astype(np.int64) * m + inverse.ravel(),
                              minlength=(n + 1) * m).reshape(n + 1, m)
        area_plane = np.bincount(plane.ravel(), minlength=n + 1)
        area_above = np.bincount(inverse.ravel(), minlength=m)
        union = area_plane[:, None] + area_above[None, :] - overlap
        iou = np.where(union > 0, overlap / np.maximum(union, 1), 0.0)
        iou[0, :] = 0
        iou[:, ids_above == 0] = 0
        rows, cols = np.nonzero(iou >= STITCH_IOU)
        order = np.argsort(-iou[rows, cols], kind="stable")
        used_rows, used_cols = set(), set()
        for k in order:
            r, c = int(rows[k]), int(cols[k])
            if r in used_rows or c in used_cols:
                continue
            used_rows.add(r)
            used_cols.add(c)
            lut[r] = ids_above[c]
    present = np.bincount(plane.ravel(), minlength=n + 1) > 0
    fresh = np.flatnonzero(present & (lut == 0))
    fresh = fresh[fresh > 0]
    lut[fresh] = np.arange(next_id, next_id + fresh.size)
    return lut[plane].astype(np.int32), next_id + int(fresh.size)


def segment_volume(model: SegmentationModel, volume: Any, **kwargs: Any) -> Any:
    """3D instance labels; see :func:`iter_segment_volume` for the arguments."""
    return run_to_end(iter_segment_volume(model, volume, **kwargs))


def iter_segment_stack_3d(
    model: SegmentationModel, image: Any, axes: str, *, out: Any = None, **kwargs: Any
) -> Generator[Progress | VolumeNote, None, Any]:
    """3D labels of an image whose axes are named (``"ZYX"``, ``"TZYX"``, ``"ZTYX"``...): every
    time point is one volume (ids unique per volume). Returns labels of the image's shape."""
    axes = str(axes).strip().upper()
    shape = tuple(int(s) for s in image.shape)
    if len(axes) != len(shape) or len(set(axes)) != len(axes):
        raise ImageError(f"axes {axes!r} must name each of the {len(shape)} axes of the image (shape {shape}) once.")
    if "Z" not in axes:
        raise ImageError(f"3D objects need a Z axis, but the axes are {axes!r}: segment the planes in 2D.")
    extra = sorted(set(axes) - set("TZYX"))
    if extra or not axes.endswith("YX"):
        raise ImageError(
            f"3D objects need axes made of T, Z, Y, X with Y and X last, got {axes!r} (choose one channel first)."
        )
    if "T" not in axes:
        return (yield from iter_segment_volume(model, image, out=out, **kwargs))
    # "TZYX" or "ZTYX": without T, a (Z, Y, X) volume
    labels = np.zeros(shape, dtype=np.int32) if out is None else out
    t_axis = axes.index("T")
    for t in range(shape[t_axis]):
        key = tuple(t if i == t_axis else slice(None) for i in range(len(shape)))
        yield from iter_segment_volume(model, image[key], out=_TimePoint(labels, t_axis, t), **kwargs)
    return labels


class _TimePoint:
    """One time point of a labels array as a (Z, Y, X) ``out``: blocks are written through."""

    def __init__(self, array: Any, axis: int, t: int) -> None:
        self.array, self.axis, self.t = array, axis, t
        self.shape = tuple(s for i, s in enumerate(array.shape) if i != axis)
        self.dtype = array.dtype

    def _key(self, index: Any) -> tuple[Any, ...]:
        index = list(index) if isinstance(index, tuple) else [index]
        index += [slice(None)] * (len(self.shape) - len(index))
        return tuple(index[: self.axis] + [self.t] + index[self.axis:])

    def __getitem__(self, index: Any) -> Any:
        return self.array[self._key(index)]

    def __setitem__(self, index: Any, value: Any) -> None:
        self.array[self._key(index)] = value

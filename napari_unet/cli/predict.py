"""``napari-unet predict INPUT... --out DIR``: segment images, stacks and folders.

Writes ``DIR/<stem>_masks.tif`` (int labels, the input's stack axes and pixel size) for
each input; with ``--dask`` (or ``--scheduler ADDRESS``) ``DIR/<stem>_masks.ome.zarr``,
computed plane by plane on dask's local threads or a dask.distributed cluster.

A batch is checked before any work: two inputs with one output name (``a/x.tif`` and
``b/x.tif``, or ``x.tif`` and ``x.png``), and an input that is another's output (``a.tif`` and
``a_masks.tif`` with ``--out`` their folder), are refused. Then an input that fails (unreadable,
wrong channel count) is reported and the others go on; the failed ones are listed at the
end (exit status 2). Outputs that exist are skipped (said on stderr) unless ``--overwrite``,
so a rerun finishes what a failed batch left; masks corrected by hand (their list beside them,
as napari-unet saves them) are skipped even then, unless ``--overwrite-corrected``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from napari_unet._atomic import check_folder_writable, reserve_space

from . import DEVICE_HELP, CLIError, one_line, terminate_as_interrupt

log = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment images, stacks or folders of images",
        description="Segment cells in images, stacks or folders; writes DIR/<stem>_masks.tif per input (and beside "
                    "it <stem>_masks.tif.corrected.json, which records the model and --diameter for napari), or "
                    "DIR/<stem>_masks.ome.zarr with --dask.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image or stack files (TIFF, OME-Zarr, PNG, JPEG) or folders of them")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the masks (created if missing)")
    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help="model name (see 'napari-unet models'), .pt file, or BioImage.IO package (.zip or a folder "
                        "with bioimageio.yaml); default: the built-in model that fits each input, told from its "
                        "first plane ('nuclei-fluo' for fluorescence, 'nuclei' for stained and bright-field "
                        "nuclei, 'cells' for phase contrast and DIC), said on stderr")
    p.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)
    p.add_argument("--engine", default="auto", choices=("auto", "torch", "onnx"),
                   help="what runs the network (default: ONNX Runtime on the CPU, torch on a GPU; "
                        "or NAPARI_UNET_ENGINE)")
    p.add_argument("--threshold", type=float, default=None,
                   help="probability threshold in (0, 1) (default: the model's own, 0.6-0.7 for the built-in models; its own for "
                        "the kind of image where it has one, e.g. colour images for 'nuclei')")
    p.add_argument("--min-size", type=int, default=None,
                   help="remove objects smaller than this many pixels at the model's object size (as Segment's "
                        "Min. size: an image enlarged 2x to reach it needs 4x the value; default: the model's own)")
    p.add_argument("--diameter", default="auto", metavar="PIXELS|auto",
                   help="typical object diameter in pixels (or '8um' with the file's pixel size); the image is "
                        "rescaled to the model's own object size. Default 'auto': estimated per image")
    p.add_argument("--tile", type=int, default=None, metavar="PIXELS",
                   help="largest tile side in pixels (a side too small for the model is refused, with the "
                        "model's minimum); 0 or not given: automatic, from free memory")
    p.add_argument("--channel", type=_channel_arg, default=None, metavar="N|mean|without-dab",
                   help="channel to segment in a multi-channel stack (in a file that names no axes: its first "
                        "axis if it has at most 4 entries), or colour of an RGB image (0 red, 1 green, 2 blue; default for RGB: the most nuclei-like colour of merged "
                        "fluorescence channels, or an immunohistochemistry image without its brown DAB, said on stderr, "
                        "else the mean of the colours; 'mean' and 'without-dab' ask for those)")
    p.add_argument("--axes", default=None, metavar="LETTERS",
                   help="axis letters of the inputs, one per axis from TCZYXS (e.g. CYX for two channels of one "
                        "plane, TYX for a time-lapse), for files that do not name their axes or name them wrong; "
                        "default: the file's (guessed when it names none)")
    p.add_argument("--series", type=_series_arg, default=None, metavar="N",
                   help="which image of a TIFF holding several (positions of a multi-position acquisition) to "
                        "segment, from 0 (default: the first); its masks are <name>_sN_masks.tif")
    p.add_argument("--folder-as-stack", action="store_true",
                   help="read each folder of 2D images as one stack (one masks file) instead of image by image")
    p.add_argument("--3d", dest="objects_3d", action="store_true",
                   help="segment z-stacks into 3D objects (ids unique in each volume; needs a Z axis; time points "
                        "stay apart)")
    p.add_argument("--voxel-size", default=None, metavar="DZ,DY,DX",
                   help="with --3d: voxel size (default: the file's; isotropic, with a warning, if it has none)")
    p.add_argument("--3d-mode", dest="mode_3d", default="3d", choices=("3d", "stitch"),
                   help="with --3d: '3d' (3D watershed, default) or 'stitch' (link each plane's objects to the "
                        "next plane's by overlap; below '3d' on every stack measured, anisotropic ones included: "
                        "touching nuclei chain through the stack)")
    p.add_argument("--orthogonal", default="auto", choices=("auto", "on", "off"),
                   help="with --3d: also predict the yz and xz planes (default auto: when the voxels are within "
                        "2x of isotropic)")
    p.add_argument("--dask", action="store_true", help="compute through dask, writing OME-Zarr")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="dask.distributed scheduler address (implies --dask)")
    p.add_argument("--overwrite", action="store_true", help="replace existing masks")
    p.add_argument("--overwrite-corrected", action="store_true",
                   help="with --overwrite, also replace masks holding slices corrected by hand (listed in the "
                        ".corrected.json beside them, as napari-unet saves them): skipped otherwise")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _expand_inputs(inputs: list[str], folder_as_stack: bool = False) -> list[Path]:
    """Files as given; folders of images are expanded (one input per image), except OME-Zarr
    folders and, with ``folder_as_stack``, every folder (read as one stack)."""
    from napari_unet.io import READABLE_SUFFIXES, is_ome_zarr, natural_key

    paths: list[Path] = []
    for text in inputs:
        path = Path(text).expanduser()
        if not path.exists():
            raise CLIError(f"input not found: {path}")
        if path.is_dir() and not (folder_as_stack or is_ome_zarr(path)):
            found = sorted((p for p in path.iterdir() if p.suffix.lower() in READABLE_SUFFIXES
                            and not p.name.startswith(".")), key=lambda p: natural_key(p.name))
            # masks written there by an earlier run (--out the input folder) are not images to segment, nor
            # are masks saved from napari (a list of corrected slices beside them) or another image's labels
            from napari_unet.io._formats import masks_files_among

            outputs = [p for p in found if _is_masks_name(p.name)]
            outputs += masks_files_among([p for p in found if p not in outputs])
            if outputs:
                print(f"napari-unet: {path}: left out {len(outputs)} file(s) of masks or labels (named *_masks.tif "
                      "as this command writes them, or like another image's labels, or saved from napari with "
                      "their list of corrected slices; name one to segment it anyway)", file=sys.stderr)
                found = [p for p in found if p not in outputs]
            if not found:
                raise CLIError(f"folder {path} holds no images ({', '.join(READABLE_SUFFIXES)})")
            paths.extend(found)
        else:
            paths.append(path)
    return paths


#: What ``predict`` adds to an input's name for its masks file (``<name>_masks.tif``).
MASKS_SUFFIX = "_masks"


def _is_masks_name(name: str) -> bool:
    return name.lower().endswith(tuple(MASKS_SUFFIX + end for end in (".tif", ".tiff", ".ome.zarr")))


def _check_out_dir(out_dir: Path) -> None:
    """``--out`` is a folder: an existing file, or a new name that looks like one, is refused."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"--out {out_dir} is a file: give the folder the masks go to (DIR/<name>_masks.tif)")
    if not out_dir.exists() and out_dir.suffix.lower() in (".tif", ".tiff", ".png", ".zarr"):
        raise CLIError(f"--out {out_dir} looks like a file name: give the folder the masks go to "
                       "(they are named <name>_masks.tif after each input)")


def _names_fold_case(folder: Path) -> bool:
    """Whether names that differ only in capitals are one file in ``folder`` (or the nearest folder above
    it that exists): macOS's and Windows' disks, an SMB share; not Linux's (ext4) — asked of the disk."""
    import tempfile

    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        with tempfile.NamedTemporaryFile(prefix=".napari-unet-case-", dir=probe) as fh:
            name = Path(fh.name)
            return name.with_name(name.name.swapcase()).exists()
    except OSError:  # (a folder that cannot be written: said later; the system's usual disks meanwhile)
        return sys.platform in ("darwin", "win32")


def _series_arg(value: str) -> int:
    """``--series``: a whole number from 0."""
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a series: give a whole number from 0")
    return number


def _input_name(path: Path) -> str:
    """The name of an input's image, as napari names its layer (the masks pair with it): a Zarr's from its
    metadata (a well of a plate opens its first field, "plate_A_1_0"), a file's from its name."""
    from napari_unet.io import stack_name
    from napari_unet.io._formats import StackReadError, is_ome_zarr, open_any

    if is_ome_zarr(path):
        try:
            return open_any(path).info.name
        except StackReadError:  # (said when it is segmented)
            pass
    return stack_name(path)


def _targets(inputs: list[Path], out_dir: Path, suffix: str, series: int | None = None) -> list[Path]:
    """``out_dir/<name>_masks<suffix>`` per input (``<name>_sN`` for series N > 0, as napari names its
    layer); refuses two inputs with one output, and an output that is an input (it would be
    overwritten, then segmented)."""
    tag = f"_s{series}" if series else ""
    targets = [out_dir / f"{_input_name(path)}{tag}{MASKS_SUFFIX}{suffix}" for path in inputs]
    folds = _names_fold_case(out_dir)
    first: dict[str, Path] = {}  # (by the name folded where names differing in capitals are one file)
    given = {path.resolve(): path for path in inputs}
    for path, target in zip(inputs, targets):
        if target.resolve() in given:
            raise CLIError(
                f"the masks of {path} would be written over {given[target.resolve()]}, which is also an "
                "input; leave that one out or segment into another --out folder"
            )
        folded = str(target).casefold() if folds else str(target)
        if folded in first:
            raise CLIError(
                f"{first[folded]} and {path} would both be written to {target} (on macOS and Windows, names that "
                "differ only in capitals are one file); rename one or segment them into different --out folders"
            )
        first[folded] = path
    return targets


def _read(path: Path, axes: str | None = None, series: int | None = None) -> tuple[Any, Any]:
    """(array, StackInfo) of an input; ``axes`` (``--axes``) overrides the file's; ``series``: which
    image of a TIFF holding several (``--series``)."""
    from napari_unet.io import read_stack

    return read_stack(path, axes=axes, series=series)


def _made_by(model: Any, diameter: str, kind: str | None) -> dict[str, Any]:
    """What the list beside a masks file says of the run that made them, as Segment records it in
    the GUI: the model (its file, date and the kind of image it was chosen for) and the object
    diameter typed (none for ``auto``). Opened in napari, the masks propose that model and diameter
    again."""
    from napari_unet.core.scale import diameter_word
    from napari_unet.io._corrected import record_diameter, record_model

    made: dict[str, Any] = {}
    record_model(made, model.metadata.get("path"), model.metadata.get("date"), kind)
    record_diameter(made, None if diameter_word(diameter) else diameter)
    return made


def _write_tif(path: Path, labels: Any, axes: str, scale: dict[str, float],
               translate: dict[str, float] | None = None, objects_3d: bool = False,
               unchanged: dict[str, Any] | None = None, made_by: dict[str, Any] | None = None) -> None:
    from napari_unet.io import write_labels

    # where the image lies (an OME-Zarr crop's translation): in pixels, kept beside the TIFF for the reader
    offset = [(translate or {}).get(a, 0.0) / scale.get(a, 1.0) for a in axes]
    write_labels(path, labels, scale=[scale.get(a) for a in axes], axes=axes,  # None: not calibrated
                 offset=offset if any(offset) else None, objects_3d=objects_3d, unchanged=unchanged, model=made_by)


#: ``--channel`` words for RGB images, and the ``colour`` of the core each one asks for.
RGB_CHANNEL_WORDS = {"mean": "mean", "without-dab": "without DAB"}


def _channel_arg(value: str) -> int | str:
    """``--channel``: a number, or one of :data:`RGB_CHANNEL_WORDS`."""
    word = value.strip().lower()
    if word in RGB_CHANNEL_WORDS:
        return word
    try:
        return int(word)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a channel: give a number, or for an RGB image 'mean' or 'without-dab'") from None


def _select_channel(data: Any, axes: str, channel: int | str | None, name: str, axes_from_file: bool = True,
                    names: list[str] | None = None, three_d: bool = False) -> tuple[Any, str]:
    """The channel to segment (``--channel``) of an input, and the axes left; for a file that names
    no axes, a short first axis guessed as Z/T is said (or, with ``--channel``, taken as channels).
    A word of :data:`RGB_CHANNEL_WORDS` keeps an RGB image whole (the core is told what to segment)."""
    from napari_unet.io._axes import planes_not_channels_note, short_guessed_axis

    if isinstance(channel, str):
        if axes.endswith("S") and "C" not in axes:
            return data, axes
        # (a batch may mix RGB files with others, as a number is left aside for a grey file)
        print(f"napari-unet: {name}: not an RGB image: --channel {channel} left aside", file=sys.stderr)
        channel = None

    short = short_guessed_axis(data.shape, axes, axes_from_file) if not axes.endswith("S") else None
    if short is not None and channel is not None:
        print(f"napari-unet: {name}: the file does not name its axes: its axis {short} ({data.shape[short]} "
              f"entries) is taken as channels for --channel (--axes to say otherwise)", file=sys.stderr)
        axes = axes[:short] + "C" + axes[short + 1:]
    elif short is not None:
        note = planes_not_channels_note(data.shape, axes, axes_from_file)
        print(f"napari-unet: {name}: {note}, segment one with --channel N (or give --axes, e.g. "
              f"{axes[:short] + 'C' + axes[short + 1:]})", file=sys.stderr)
    if "C" not in axes and axes.endswith("S") and channel is not None:
        # one colour of an RGB(A) image (e.g. nuclei in blue), rather than the mean of the colours
        n = data.shape[-1]
        if not 0 <= channel < min(n, 3):
            alpha = " (3 is its alpha, its transparency, not a colour)" if n == 4 and channel == 3 else ""
            raise CLIError(f"{name} is an RGB image; --channel must be 0, 1 or 2 (red, green, blue){alpha}")
        return data[..., channel], axes[:-1]
    if "C" not in axes:  # one grey channel (a batch may mix such files with multi-channel ones)
        if channel is not None and channel != 0:
            print(f"napari-unet: {name}: one channel only: --channel {channel} left aside", file=sys.stderr)
        return data, axes
    c_axis = axes.index("C")
    n = data.shape[c_axis]
    if channel is None:
        if n != 1:
            named = f": {', '.join(f'{i} {c}' for i, c in enumerate(names))}" if names and len(names) == n else ""
            # (a stack of 3 or 4 planes saved without axes reads as the colours of one image)
            planes = (f"; or, if they are the planes of a z-stack, say so with --axes {axes.replace('C', 'Z')}"
                      if three_d and "Z" not in axes else "")
            raise CLIError(f"{name} has {n} channels (axes {axes}){named}; choose one with --channel 0..{n - 1} "
                           f"(for nuclei models, the nuclear stain){planes}")
        channel = 0
    if not 0 <= channel < n:
        raise CLIError(f"{name} has {n} channels; --channel must be in 0..{n - 1}")
    index = (slice(None),) * c_axis + (channel,)
    return data[index], axes.replace("C", "")


class _ModelChoice:
    """The model of each input: the one given with ``--model``, or else the built-in model that
    fits the input's first plane with structure (:func:`_first_plane_with_structure`;
    :func:`~napari_unet.core.modality.image_modality`, as Segment proposes in the GUI), each loaded
    once; a change of model is said on stderr."""

    def __init__(self, given: str | None, device: str | None) -> None:
        from napari_unet.core import load_model

        self._device = device
        self.given = load_model(given, device=device) if given is not None else None
        self._loaded: dict[str, Any] = {}
        self._last: str | None = None
        self.kind: str | None = None  # the kind of image the last input was told to be (None: not told)

    def _load(self, name: str | None) -> Any:
        from napari_unet.core import load_model
        from napari_unet.core.checkpoint import ModelFileError

        if name not in self._loaded:
            try:
                self._loaded[name] = load_model(name, device=self._device)
            except ModelFileError:  # that built-in model is not installed: the default one
                if name is None:
                    raise
                self._loaded[name] = self._load(None)
        return self._loaded[name]

    def candidates(self) -> list[Any]:
        """Every model a run may use (values given are checked against each before any work)."""
        if self.given is not None:
            return [self.given]
        from napari_unet.core.modality import MODEL_FOR

        return [self._load(name) for name in dict.fromkeys(MODEL_FOR.values())]

    def for_input(self, data: Any, rgb: bool, name: str) -> Any:
        self.kind = None
        if self.given is not None:
            return self.given
        from napari_unet.core.modality import KIND_WORDS, MODEL_FOR, image_modality
        from napari_unet.core.preprocess import ImageError

        try:
            kind = image_modality(_first_plane_with_structure(data, rgb)).kind  # (its central part when large)
        except ImageError:  # infinite values: the input's one line, before any model is named
            raise
        except (ValueError, IndexError, TypeError):  # not a plane kinds are told on: the default model
            kind = None
        model_name = MODEL_FOR[kind] if kind is not None else None
        model = self._load(model_name)
        self.kind = kind
        if model.name != self._last:
            why = f"for this {KIND_WORDS[kind]}" if kind is not None else "(the default)"
            print(f"napari-unet: {name}: model '{model.name}' {why}; --model chooses another", file=sys.stderr)
            self._last = model.name
        return model


#: Planes looked at from the start of a stack for one that holds more than one value or camera noise
#: (a time-lapse whose first frames are dark), to choose the model on.
MODEL_CHOICE_PLANES = 5


def _first_plane_with_structure(data: Any, rgb: bool) -> Any:
    """The first of the stack's first :data:`MODEL_CHOICE_PLANES` planes that is neither constant nor
    camera noise alone (:func:`~napari_unet.core.preprocess.is_camera_noise`), else the first plane."""
    import numpy as np

    from napari_unet.core.preprocess import is_camera_noise, is_constant
    from napari_unet.core.stack import read_filled_plane, read_plane

    lead = tuple(data.shape[: data.ndim - (3 if rgb else 2)])
    first = None
    for n, idx in enumerate(np.ndindex(*lead)):
        if n >= MODEL_CHOICE_PLANES:
            break
        plane = read_filled_plane(data, idx)[0]  # a mosaic's black border would make any image look dark-field
        first = plane if first is None else first
        if not (is_constant(plane) or is_camera_noise(plane)):
            return plane
    return first if first is not None else read_plane(data, ())


def run(args: argparse.Namespace) -> int:
    from napari_unet.core.instances import _check_args
    from napari_unet.core.tiling import min_tile_size

    use_dask = args.dask or args.scheduler is not None
    inputs = _expand_inputs(args.inputs, args.folder_as_stack)
    out_dir = Path(args.out).expanduser()
    _check_out_dir(out_dir)
    targets = _targets(inputs, out_dir, ".ome.zarr" if use_dask else ".tif", getattr(args, "series", None))
    device = None if args.device == "auto" else args.device
    models = _ModelChoice(args.model, device)
    from napari_unet.core.engine import resolve_engine

    candidates = models.candidates()
    engine = resolve_engine(args.engine, candidates[0].device)
    packaged = getattr(candidates[0].net, "packaged_engine", None)  # (a BioImage.IO package runs its own weights)
    engine = packaged(engine) if packaged is not None else engine
    if packaged is not None:  # (its weights loaded now: weights that cannot run failed once per input, 25 of 30)
        from napari_unet.core.checkpoint import ModelFileError

        try:
            candidates[0].net.load_weights(engine.name)
        except ModelFileError as exc:  # (its message names the package already, most often)
            said = one_line(exc)
            raise CLIError(said if said.startswith(f"{Path(args.model).name}:") else f"{args.model}: {said}") from None
    log.info("model %s on %s, engine %s", "/".join(m.name for m in candidates), candidates[0].device,
             engine.describe())
    if engine.reason:
        print(f"napari-unet: the network runs with {engine.describe()}", file=sys.stderr)
    for model in candidates:
        # values given are checked before any work; the rest stay None: the model's own, for the kind of image
        _check_args(*model.resolve_postprocessing(args.threshold, args.min_size))
        if args.tile and args.tile < min_tile_size(model.net):
            raise CLIError(
                f"--tile {args.tile} is too small for model {model.name!r}: give at least "
                f"{min_tile_size(model.net)} pixels, or 0 for automatic"
            )
    # a bad value stops everything, before any work (a physical size is checked against each
    # file's own pixel size later: a tiny one here checks the words without refusing small sizes)
    _diameter(args.diameter, {"X": 1e-9}, "--diameter")
    if args.overwrite_corrected and not args.overwrite:  # (it did nothing, silently: every masks file skipped)
        raise CLIError("--overwrite-corrected goes with --overwrite (which replaces existing masks; this also "
                       "those with slices corrected by hand)")
    args.voxel_size = _voxel_size(args.voxel_size)
    if not args.objects_3d and (args.voxel_size is not None or args.mode_3d != "3d" or args.orthogonal != "auto"):
        raise CLIError("--voxel-size, --3d-mode and --orthogonal go with --3d")
    if args.objects_3d and args.scheduler is not None:  # (once, not for each file)
        raise CLIError("--scheduler does not go with --3d: 3D objects are computed in this process, whole volumes "
                       "in blocks; leave --scheduler out (--dask still writes OME-Zarr)")
    try:  # before any work: a batch is not segmented for hours to find then that nothing can be written
        check_folder_writable(out_dir)
    except OSError as exc:
        raise CLIError(f"--out {out_dir} cannot be written ({exc.strerror or one_line(exc)}): give a folder you "
                       "can write to") from exc
    failed: list[Path] = []
    with terminate_as_interrupt(), _scheduler_client(args):
        _predict_all(models, inputs, targets, args, use_dask, failed)
    if failed:
        names = ", ".join(p.name for p in failed[:10]) + (", ..." if len(failed) > 10 else "")
        raise CLIError(f"{len(failed)} of {len(inputs)} inputs failed (see above): {names}")
    return 0


SCHEDULER_TIMEOUT_S = 20


@contextlib.contextmanager
def _scheduler_client(args: argparse.Namespace) -> Iterator[None]:
    """With ``--scheduler``: one connection to it for the whole batch (``args.scheduler`` becomes the
    client while it runs); a scheduler that cannot be reached stops the batch before any work, once,
    not after a timeout for each input."""
    address = args.scheduler
    if address is None:
        yield
        return
    from distributed import Client

    try:
        client = Client(address, timeout=SCHEDULER_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, ValueError of a bad address...
        raise CLIError(f"--scheduler {address}: cannot connect ({one_line(exc)}): is the dask scheduler "
                       "running there?") from None
    args.scheduler = client
    try:
        yield
    finally:
        args.scheduler = address
        client.close()


def _predict_all(models: Any, inputs: list[Path], targets: list[Path], args: argparse.Namespace, use_dask: bool,
                 failed: list[Path]) -> None:
    """Segment each input into its target, one line per input (done, skipped or failed: ``failed``)."""
    from napari_unet.core.engine import RunInterrupted

    for path, target in zip(inputs, targets, strict=True):
        try:
            # (lexists: a link to nowhere is the user's too)
            if os.path.lexists(target) and not args.overwrite:
                channel = _channel_of_masks(target) if args.channel is not None else None
                of = (f"the masks of channel {channel!r}: segment another channel into another --out folder; "
                      if channel and channel != _channel_asked(path, args) else "")
                print(f"napari-unet: {path}: skipped, {target} exists ({of}--overwrite replaces it)", file=sys.stderr)
                continue
            corrected = _slices_corrected_in(target) if os.path.lexists(target) and not args.overwrite_corrected else ""
            if corrected:  # (--overwrite is for a model's masks: these are someone's work)
                print(f"napari-unet: {path}: skipped, {target} holds {corrected} (--overwrite-corrected "
                      "replaces it)", file=sys.stderr)
                continue
            found = _as_found(target)  # (compared again before the masks are put in place)
            with _messages_about(path):
                _segment_one(models, path, target, args, use_dask, found)
        except Exception as exc:  # noqa: BLE001 - one input's failure is a line, and the batch goes on
            if isinstance(exc, RunInterrupted):  # (Ctrl+C or SIGTERM: terminate_as_interrupt)
                raise KeyboardInterrupt from None
            # (a damaged plane of a large file read lazily fails only when its pixels are decoded: a
            # DeflateError or blosc's RuntimeError ended the whole batch with a traceback)
            known = isinstance(exc, (CLIError, ValueError, OSError))
            print(f"napari-unet: {path}: {one_line(exc) if known else f'{type(exc).__name__}: {one_line(exc)}'}",
                  file=sys.stderr)
            failed.append(path)
            continue
        # (a reader of the list that stops, `| head`: the batch goes on, unlisted; see cli.main)
        print(f"{path} -> {target}", flush=True)


def _channel_asked(path: Path, args: argparse.Namespace) -> str | None:
    """The name of the channel ``--channel`` asks for in ``path`` (as its masks record it), None when
    it cannot be told (no C axis, unreadable: said when it is segmented)."""
    from napari_unet.io import inspect_stack

    if not isinstance(args.channel, int):
        return None
    try:
        return _channel_recorded(inspect_stack(path, getattr(args, "axes", None), getattr(args, "series", None)),
                                 args.channel)
    except (ValueError, IndexError):
        return None


def _channel_recorded(info: Any, channel: int | str | None) -> str | None:
    """The name the masks of ``channel`` of an image with a C axis record (as the reader names that
    channel's layer, see CHANNEL_KEY); None for an image without one."""
    from napari_unet.io._reader import channel_layer_suffix

    if "C" not in info.axes:
        return None
    return channel_layer_suffix(info, channel if isinstance(channel, int) else 0)


def _channel_of_masks(target: Path) -> str | None:
    """The channel of a multi-channel file that the masks at ``target`` were made from, as their list
    or OME-Zarr mark records it (None: not recorded, or not napari-unet's)."""
    from napari_unet.io._corrected import recorded_channel, stored_layout
    from napari_unet.io._reader import _napari_unet_mark

    if target.is_dir():
        return recorded_channel(_napari_unet_mark(target))
    return stored_layout(target).channel


def _as_found(target: Path) -> dict[str, Any]:
    """What is at ``target`` now ({path: file identity}: the masks file or folder, the list beside it,
    an OME-Zarr's metadata files): masks corrected and saved there while the batch runs are then kept,
    not replaced by its output (they were: 1 corrected object -> 59, the list emptied, exit 0)."""
    from napari_unet._atomic import file_identity
    from napari_unet.io._corrected import sidecar_path

    paths = [target, sidecar_path(target)]
    if target.is_dir():
        paths += [target / name for name in (".zattrs", ".zgroup", "zarr.json")]
    return {str(p): file_identity(p) for p in paths}


def _slices_corrected_in(target: Path) -> str:
    """What the list beside an existing masks file says was corrected by hand ("" when nothing)."""
    from napari_unet.io._corrected import load_corrected_list

    try:
        planes = load_corrected_list(target)  # (empty: none beside it, or a name too long for one)
    except ValueError:  # (unreadable: kept as someone's, as the reader keeps them)
        return "slices corrected by hand (its list of them cannot be read)"
    if not planes:
        return ""
    return "labels corrected by hand" if planes == [()] else f"{len(planes)} slice(s) corrected by hand"


@contextlib.contextmanager
def _messages_about(path: Path) -> Iterator[None]:
    """Messages logged while ``path`` is segmented (a constant plane, no object found at any scale,
    ...) say which input of the batch they are about, as the CLI's own lines do."""
    def named(record: logging.LogRecord) -> bool:
        if not getattr(record, "napari_unet_named", False):  # once, whatever the number of handlers
            record.msg, record.args = f"napari-unet: {path}: {record.getMessage()}", ()
            record.napari_unet_named = True
        return True

    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(named)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(named)


def _diameter(text: str, scale: dict[str, float], name: str | None) -> float | None:
    """``--diameter`` in pixels of this input (None: auto), or a one-line error (led by ``name``
    when given: the batch loop names the file itself)."""
    from napari_unet.core.preprocess import ImageError
    from napari_unet.core.scale import parse_diameter

    pixel_size = scale.get("X")
    if pixel_size is not None and scale.get("Y"):  # a diameter is the equivalent diameter of an area
        pixel_size = float((pixel_size * scale["Y"]) ** 0.5)
    try:
        return parse_diameter(text, pixel_size)  # only calibrated axes are in the scale: 1.0 is a real 1 µm
    except ImageError as exc:
        raise CLIError(f"{name}: {exc}" if name else str(exc)) from None


def _voxel_size(text: str | None) -> tuple[float, float, float] | None:
    """``--voxel-size DZ,DY,DX`` as three positive numbers, or a one-line error."""
    if text is None:
        return None
    from napari_unet.core.preprocess import ImageError
    from napari_unet.core.volume import check_spacing

    try:
        values = [float(v) for v in str(text).replace(" ", "").split(",")]
        return check_spacing(values)[0]
    except ImageError as exc:  # (three numbers, but not one voxel: its own reason, units apart...)
        raise CLIError(f"--voxel-size {text!r}: {one_line(exc)}") from None
    except ValueError:
        raise CLIError(f"--voxel-size {text!r}: give three positive numbers DZ,DY,DX (e.g. 2,0.5,0.5)") from None


def _options_3d(args: argparse.Namespace, axes: str, scale: dict[str, float], rgb: bool, name: str,
                say_spacing: bool = True) -> dict[str, Any] | None:
    """Keyword arguments of the 3D path for one input (None without --3d), or a one-line error
    (``say_spacing``: say here when the voxel size is unknown; with --dask the 3D path's note says it)."""
    if not args.objects_3d:
        return None
    if rgb or "Z" not in axes:
        raise CLIError(f"--3d needs a z-stack, but {name} has axes {axes} (no Z axis): segment it without --3d")
    spacing = args.voxel_size
    if spacing is None and {"Z", "Y", "X"} <= scale.keys():  # (a z step alone, in um, is no ratio to pixels)
        spacing = (scale["Z"], scale["Y"], scale["X"])
    if spacing is None and say_spacing:
        what = ("gives the z step but not the pixel size" if "Z" in scale else "does not say its voxel size")
        print(f"napari-unet: {name}: the file {what}: isotropic voxels assumed; the "
              "planes of most z-stacks are 2-5x further apart than their pixels: give --voxel-size DZ,DY,DX "
              "(e.g. 2,0.5,0.5), else the 3D objects may come out cut or merged", file=sys.stderr)
    orthogonal = {"auto": None, "on": True, "off": False}[args.orthogonal]
    return {"spacing": spacing, "mode": args.mode_3d, "orthogonal": orthogonal}


def _segment_one(models: _ModelChoice, path: Path, target: Path, args: argparse.Namespace, use_dask: bool,
                 found: dict[str, Any] | None = None) -> None:
    """Segment one input into ``target``."""
    from napari_unet.io._formats import shown_path

    name = shown_path(path)  # (a field of a plate: "plate.ome.zarr/A/1/0", not "0")
    data, info = _read(path, getattr(args, "axes", None), getattr(args, "series", None))
    axes, scale = info.axes, dict(info.scale)
    if info.other_series:
        from napari_unet.io._formats import others_text

        give = (f"; give the others by their paths ({others_text(info.others_at)})" if info.others_at else
                "; --series N segments another" if not info.series else "")
        which = "the first one" if not info.series else f"image {info.series}"
        print(f"napari-unet: {name}: {info.other_series + 1} images (positions, series or fields); {which} is "
              f"segmented{give}", file=sys.stderr)
    data, axes = _select_channel(data, axes, args.channel, name, info.axes_from_file, info.channel_names,
                                 three_d=args.objects_3d)
    rgb = axes.endswith("S")
    model = models.for_input(data, rgb, name)
    made_by = _made_by(model, args.diameter, models.kind)  # (recorded with the masks, either way)
    if "C" not in axes and (suffix := _channel_recorded(info, args.channel)) is not None:  # (one channel of several)
        from napari_unet.io._corrected import CHANNEL_KEY

        made_by[CHANNEL_KEY] = suffix
    label_axes = axes[:-1] if rgb else axes
    diameter = _diameter(args.diameter, scale, None)
    options_3d = _options_3d(args, label_axes, scale, rgb, name, say_spacing=not use_dask)
    if use_dask:
        from napari_unet.batch import segment_to_ome_zarr

        segment_to_ome_zarr(
            model, data, target, threshold=args.threshold, min_size=args.min_size, rgb=rgb, diameter=diameter,
            scheduler=args.scheduler, tile_size=args.tile, axes=label_axes,
            scale=[scale.get(a) for a in label_axes], translate=info.translate_for(label_axes), overwrite=args.overwrite,
            show_progress=_show_progress(args), engine=args.engine, objects_3d=options_3d,
            device=None if args.device == "auto" else args.device, colour=_colour_arg(args), unchanged=found,
            made_by=made_by,
        )
    else:
        with _labels_buffer(data, rgb, target) as out, _warnings_counted() as warned:
            labels = _segment_with_bar(model, data, rgb, diameter, args, name, label_axes, options_3d, out)
            if args.min_size and not labels.any():  # what the size search's "no object found" does not say
                print(f"napari-unet: {name}: no object is left with --min-size {args.min_size} (objects of fewer "
                      "pixels are removed): try a smaller one, or leave it out for the model's own", file=sys.stderr)
            elif not warned.count and not labels.any():  # (empty masks written in silence: Segment says it; not
                # where a plane was said to be blank, or the size search said it found nothing)
                print(f"napari-unet: {name}: no object found, the masks written are empty: try another --diameter "
                      "or --threshold, or a model fine-tuned on images like it", file=sys.stderr)
            _write_tif(target, labels, label_axes, scale, info.translate, objects_3d=options_3d is not None,
                       unchanged=found, made_by=made_by)


class _WarningCount(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


@contextlib.contextmanager
def _warnings_counted() -> Iterator[_WarningCount]:
    """The warnings napari-unet logs meanwhile (a blank plane, nothing found at any scale...), counted."""
    handler = _WarningCount()
    logger = logging.getLogger("napari_unet")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _colour_arg(args: argparse.Namespace) -> str:
    """The core's ``colour`` for an RGB input: what ``--channel mean|without-dab`` asks for, else "auto"
    (a numbered colour was taken out of the image already: :func:`_select_channel`)."""
    channel = getattr(args, "channel", None)
    return RGB_CHANNEL_WORDS[channel] if isinstance(channel, str) else "auto"


#: The labels of a stack read whole are held in memory when they take at most this share of the memory free.
LABELS_MEMORY_SHARE = 0.5


@contextlib.contextmanager
def _labels_buffer(data: Any, rgb: bool, target: Path) -> Iterator[Any]:
    """Where the labels of a stack read lazily (a large file), or whose labels do not fit in the memory
    free, are put before the TIFF is written: a temporary file beside the output (removed when done,
    even after a crash), not memory, which needs 4 bytes per pixel (a 280 MB uint8 stack read whole
    made 1.1 GB of labels, and a 1.5 GiB job was killed); None (in memory) otherwise."""
    import numpy as np

    from napari_unet._memory import available_memory

    shape = tuple(data.shape[:-1] if rgb else data.shape)
    free = available_memory()
    fits = free is None or int(np.prod(shape, dtype=np.int64)) * 4 <= LABELS_MEMORY_SHARE * free
    if isinstance(data, np.ndarray) and fits:
        yield None
        return
    with tempfile.TemporaryFile(dir=target.parent, prefix=".napari-unet-labels-") as fh:
        try:
            reserve_space(fh, int(np.prod(shape, dtype=np.int64)) * 4, target.parent)
        except OSError as exc:
            raise CLIError(f"{exc.strerror} (this stack's labels, while it is segmented)") from None
        yield np.memmap(fh, dtype=np.int32, mode="w+", shape=shape)


def _segment_with_bar(model: Any, data: Any, rgb: bool, diameter: float | None, args: argparse.Namespace,
                      name: str, axes: str = "", options_3d: dict[str, Any] | None = None, out: Any = None) -> Any:
    from tqdm import tqdm

    from napari_unet.core.events import Progress, run_to_end
    from napari_unet.core.predict import iter_segment

    options = {"threshold": args.threshold, "min_size": args.min_size, "diameter": diameter,
               "tile_size": args.tile, "engine": args.engine}
    if options_3d is not None:
        from napari_unet.core.volume import iter_segment_stack_3d

        gen = iter_segment_stack_3d(model, data, axes, out=out, **options_3d, **options)
    else:
        gen = iter_segment(model, data, rgb=rgb, out=out, colour=_colour_arg(args), **options)
    bar = tqdm(total=None, desc=name, unit="tile" if options_3d is None else "step", disable=not _show_progress(args),
               file=sys.stderr, leave=False)
    said: set[str] = set()

    def show(event: Any) -> None:
        if not isinstance(event, Progress):  # a note of the 3D path (e.g. an assumed voxel size): once
            message = getattr(event, "message", None)  # (None: no note, a volume's size for Segment's dock)
            if message is not None and message not in said and "voxel size is unknown" not in message:
                said.add(message)
                bar.write(f"napari-unet: {name}: {message}", file=sys.stderr)
            return
        bar.total = event.total
        bar.update(event.done - bar.n)

    try:
        return run_to_end(gen, show)
    finally:
        gen.close()
        bar.close()


def _show_progress(args: argparse.Namespace) -> bool:
    """Progress bars on a terminal only: redrawn with carriage returns, they filled a batch job's log."""
    return not args.no_progress and sys.stderr.isatty()

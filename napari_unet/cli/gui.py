"""``napari-unet gui``: open napari with the plugin's widgets docked and a sample image."""

from __future__ import annotations

import argparse
from pathlib import Path

#: Widgets docked by ``gui``, in this order (display names from napari.yaml).
DOCKED_WIDGETS = ("Load stack", "Segment", "Correct", "Fine-tune")
DEFAULT_SAMPLE = "nuclei_fluorescence_fields"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("gui", help="open napari with napari-unet docked and a sample image")
    parser.add_argument("paths", nargs="*", help="images to open instead of the sample")
    parser.add_argument("--sample", default=DEFAULT_SAMPLE,
                        help=f"sample to open when no path is given (default: {DEFAULT_SAMPLE}; 'none' for none)")
    parser.add_argument("--screenshot", type=Path, metavar="PNG",
                        help="save a screenshot of the window to PNG and quit (for docs and tests)")
    parser.set_defaults(run=run)


def populate_viewer(viewer, paths: list[str], sample: str | None) -> dict:
    """Dock the plugin's widgets in ``viewer`` and open ``paths`` (or a sample).

    Returns the docked widgets by display name.
    """
    from npe2 import PluginManager

    manifest = PluginManager.instance().get_manifest("napari-unet")
    known = {w.display_name for w in manifest.contributions.widgets or []}
    docked = {}
    for name in DOCKED_WIDGETS:  # tabbed on the right; Segment in front
        if name in known:
            _dock, docked[name] = viewer.window.add_plugin_dock_widget("napari-unet", name, tabify=True)
    if "Segment" in docked:
        show_dock(viewer, "Segment")
    if paths:
        for path in paths:
            try:
                viewer.open(path, plugin="napari-unet")
            except ValueError:  # a file napari-unet's reader does not take (a PNG, a JPEG): napari's own
                try:
                    viewer.open(path)
                except Exception as exc:  # noqa: BLE001 - any reader's failure on a file is the user's to read
                    # (a folder of text files: napari's image reader raised struct.error, a screen of traceback)
                    from . import one_line

                    raise ValueError(f"cannot open {path}: {one_line(exc)}") from None
    elif sample and sample != "none":
        samples = {s.key for s in manifest.contributions.sample_data or []}
        if sample in samples:
            layers = viewer.open_sample("napari-unet", sample)
            for layer in layers:  # the ground truth is there to compare with, not to confuse
                if layer.name.endswith("ground truth"):
                    layer.visible = False
                else:
                    viewer.layers.selection.active = layer
                    axes = ((layer.metadata or {}).get("napari_unet") or {}).get("layer_axes", "")
                    if axes.startswith("T"):  # the first field or time point (napari shows the middle one),
                        viewer.dims.set_current_step(0, 0)  # as the tutorial says; a z-stack stays mid-way
        elif samples:
            raise ValueError(f"No sample named {sample!r}; choose one of: {', '.join(sorted(samples))}.")
    return docked


def show_dock(viewer, name: str) -> None:
    """Bring the plugin's dock widget ``name`` to the front of its tab group."""
    from napari_unet.widgets._napari_compat import raise_plugin_dock

    raise_plugin_dock(viewer, "napari-unet", name)


def _check_display() -> None:
    """On Linux without a display (an SSH session, a server) Qt aborts the process with a screen of
    messages: one line instead (an offscreen or other platform asked for with QT_QPA_PLATFORM runs)."""
    import os
    import sys

    if (sys.platform.startswith("linux") and not os.environ.get("QT_QPA_PLATFORM")
            and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY")):
        raise ValueError("no display to open napari on (DISPLAY is not set): run it in a desktop session, "
                         "with ssh -X, or under xvfb-run; napari-unet predict and train need no display.")


def run(args: argparse.Namespace) -> int:
    import napari

    for path in args.paths:
        if not Path(path).exists():
            raise ValueError(f"No such file or folder: {path}")
    if args.screenshot and not Path(args.screenshot).expanduser().parent.is_dir():  # (napari then never quit)
        raise ValueError(f"--screenshot {args.screenshot}: its folder does not exist")
    _check_display()
    from qtpy.QtCore import QTimer

    try:
        viewer = napari.Viewer(title="napari-unet")
    except OSError as exc:  # (napari writes its theme icons and settings under the home folder first)
        name = exc.filename or ""
        raise OSError(exc.errno, f"napari could not write its own files ({exc.strerror or exc}: {name}): make the "
                      "home folder writable, or set XDG_CACHE_HOME and XDG_CONFIG_HOME to folders that can be "
                      "written") from None
    populate_viewer(viewer, args.paths, args.sample)

    QTimer.singleShot(300, viewer.reset_view)  # fit the image once the docks have their size
    if args.screenshot:

        def _shoot() -> None:
            try:
                viewer.screenshot(str(args.screenshot), canvas_only=False, flash=False)
            finally:  # (a screenshot that fails must not leave napari open)
                viewer.close()

        QTimer.singleShot(1500, _shoot)
    napari.run()
    return 0

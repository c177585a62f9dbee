"""The extra-examples panel: training examples beyond the corrected slices.

They come from other image/labels layer pairs (read when training starts, so later edits
count) or from folders of image and label files (read when added).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, FileEdit, PushButton, Select
from napari.layers import Image, Labels

from .._base import full_resolution, notify_error, notify_info
from .._corrections import CorrectedSlices
from .._masks import image_name_of_masks
from .._napari_compat import unwrap_proxy
from .._examples import (
    FolderSource,
    LabelledSlicesToRead,
    LayerPairSource,
    _check_pair_shapes,
    as_label_plane,
    colour_metadata,
    empty_slices_note,
    examples_from_folders,
    examples_from_layers,
    held_in_memory,
)
from .ui import layer_choices

if TYPE_CHECKING:
    import napari


class ExtraExamplesPanel(Container):
    """Other image + its labels ("Add layer pair"), image + label folders ("Add folders")."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._extra_sources: list[LayerPairSource | FolderSource] = []
        self.reading: Any = None  # the worker reading folders of examples (None: none)
        self._extra_image_combo = ComboBox(label="Other image", choices=lambda _w=None: layer_choices(viewer, Image))
        self._extra_labels_combo = ComboBox(label="Its labels",
                                            choices=lambda _w=None: layer_choices(viewer, Labels, Image),
                                            tooltip="A Labels layer, or an Image layer holding label ids.")
        self._add_pair_button = PushButton(text="Add layer pair",
                                           tooltip="Train on another image and its labels layer too (all its slices).")
        self._image_folder = FileEdit(label="Image folder", mode="d")
        self._labels_folder = FileEdit(label="Label folder", mode="d")
        self._add_folder_button = PushButton(text="Add folders",
                                             tooltip="Train on image files and their labels files too (paired by "
                                                     "name: a.tif with a.tif, a_masks.tif, ...).")
        self._extra_list = Select(label="Added", choices=self._extra_choices,
                                  tooltip="The examples added here, learnt from beside the corrected slices.")
        self._extra_list.native.setMaximumHeight(80)
        self._remove_extra_button = PushButton(text="Remove selected examples")
        self.extend([
            self._extra_image_combo, self._extra_labels_combo, self._add_pair_button,
            self._image_folder, self._labels_folder, self._add_folder_button,
            self._extra_list, self._remove_extra_button,
        ])

        self._add_pair_button.changed.connect(self._add_pair_clicked)
        self._add_folder_button.changed.connect(self._add_folder_clicked)
        self._remove_extra_button.changed.connect(self._remove_extra_clicked)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved,
                      viewer.layers.events.renamed):
            event.connect(self._on_layers_changed)

    def _extra_choices(self, _widget=None) -> list[tuple[str, int]]:
        # numbered: two folders named alike ("images/") are two rows, each removable
        return [(f"{i + 1}. {src.description}", i) for i, src in enumerate(self._extra_sources)]

    def _on_layers_changed(self, *_args) -> None:
        self._extra_image_combo.reset_choices()
        self._extra_labels_combo.reset_choices()
        for source in self._extra_sources:  # a layer of a pair renamed: the pair follows it
            if isinstance(source, LayerPairSource):
                source.follow_renames()
        self._extra_list.reset_choices()

    # ------------------------------------------------------------------ adding and removing
    def _add_pair_clicked(self, *_args) -> None:
        image, labels = self._extra_image_combo.value, self._extra_labels_combo.value
        if image is None or labels is None:
            notify_error("Add examples", "choose an image layer and a labels layer first.")
            return
        try:
            self.add_layer_pair(image, labels)
        except ValueError as exc:
            notify_error("Add examples", exc)

    def add_layer_pair(self, image: Any, labels: Any) -> None:
        """Use another image/labels layer pair as extra examples (checked now, read at Start)."""
        if labels is image:
            raise ValueError("choose two different layers: an image and its labels.")
        _check_pair_shapes(image, labels)
        finest = full_resolution(labels)  # (a labels pyramid: its level 0, as for images)
        as_label_plane(finest[(0,) * (labels.ndim - 2)] if labels.ndim > 2 else finest, f"{labels.name!r}")
        source = LayerPairSource(image.name, labels.name, unwrap_proxy(image), unwrap_proxy(labels))
        if any(isinstance(s, LayerPairSource) and s == source for s in self._extra_sources):
            return
        self._extra_sources.append(source)
        self._extra_list.reset_choices()

    def _add_folder_clicked(self, *_args) -> None:
        """The files are read in a thread worker (502 DSB2018 pairs held the window 3.3 s); the
        button is off until they are in."""
        image_dir, labels_dir = self._image_folder.value, self._labels_folder.value
        if not _folders_chosen(image_dir, labels_dir):
            notify_error("Add examples", "choose an image folder and a label folder first.")
            return
        from .._base import qt_alive, start_worker

        not_corrected: list[tuple[str, int]] = []

        def read():
            return examples_from_folders(image_dir, labels_dir, not_corrected)
            yield  # (a generator: start_worker runs those)

        def added(examples: list) -> None:
            if qt_alive(self):
                self._folders_added(image_dir, labels_dir, examples, not_corrected)

        def failed(exc: BaseException) -> None:
            notify_error("Add examples", exc)

        def done() -> None:
            self.reading = None
            if qt_alive(self):
                self._add_folder_button.enabled = True

        self._add_folder_button.enabled = False
        self.reading = start_worker(read(), returned=added, errored=failed, finished=done,
                                    title=f"Fine-tune reading the examples in {Path(image_dir).name} (stops)")

    def add_example_folders(self, image_dir: str | Path, labels_dir: str | Path) -> int:
        """Read image/label file pairs from two folders as extra examples; returns how many."""
        if not _folders_chosen(image_dir, labels_dir):
            raise ValueError("choose an image folder and a label folder first.")
        not_corrected: list[tuple[str, int]] = []
        examples = examples_from_folders(image_dir, labels_dir, not_corrected)
        return self._folders_added(image_dir, labels_dir, examples, not_corrected)

    def _folders_added(self, image_dir: str | Path, labels_dir: str | Path, examples: list,
                       not_corrected: list[tuple[str, int]]) -> int:
        self._extra_sources.append(FolderSource(Path(image_dir), Path(labels_dir), examples))
        self._extra_list.reset_choices()
        left_out = _images_without_labels(Path(image_dir), Path(labels_dir))
        message = f"Added {len(examples)} examples from {Path(image_dir).name}/."
        if left_out:
            message += (f" Left out {len(left_out)} image(s) without a labels file: {', '.join(left_out[:5])}"
                        f"{' …' if len(left_out) > 5 else ''}.")
        if not_corrected:
            n = sum(count for _name, count in not_corrected)
            message += (f" Left out {n} slice(s) not marked corrected in the masks saved by napari-unet "
                        f"({', '.join(name for name, _count in not_corrected[:3])}"
                        f"{' …' if len(not_corrected) > 3 else ''}): the model's own output there.")
        notify_info(message)
        return len(examples)

    def _remove_extra_clicked(self, *_args) -> None:
        chosen = set(self._extra_list.value or [])
        self._extra_sources = [s for i, s in enumerate(self._extra_sources) if i not in chosen]
        self._extra_list.reset_choices()

    # ------------------------------------------------------------------ examples
    def examples(self, read: bool = True) -> list[Any]:
        """The examples of every extra source, in the order they were added (unchecked); ``read=False``:
        those of layers still to be read (:class:`~.._examples.ExampleToRead`; the slices holding
        labels of a stack read lazily from its file, :class:`~.._examples.LabelledSlicesToRead`).

        Raises
        ------
        ValueError
            A layer of a pair was removed, or its layers no longer match.
        """
        examples: list[Any] = []
        layers = self._viewer.layers
        for source in self._extra_sources:
            if isinstance(source, FolderSource):
                examples += source.examples
                continue
            if source.image_name not in layers or source.labels_name not in layers:
                raise ValueError(f"{source.description}: a layer was removed; remove this extra source.")
            extra_labels = layers[source.labels_name]
            extra_planes = None
            # a masks layer ("<image> masks") teaches its corrected slices; other labels are ground
            # truth, every slice with labels (its corrected list, if any, only says which were touched up)
            if image_name_of_masks(extra_labels.name) is not None and extra_labels.metadata.get("napari_unet_corrected"):
                extra_planes = CorrectedSlices.for_layer(extra_labels).planes
            elif extra_labels.ndim > 2:
                if not read and not held_in_memory(full_resolution(extra_labels)):  # (found by reading it all: later)
                    _check_pair_shapes(layers[source.image_name], extra_labels)
                    examples.append(LabelledSlicesToRead(full_resolution(layers[source.image_name]),
                                                         full_resolution(extra_labels), extra_labels.name,
                                                         source.description,
                                                         colour_metadata(extra_labels, layers[source.image_name])))
                    continue
                extra_planes = _labelled_planes(extra_labels, source.description)
            examples += examples_from_layers(layers[source.image_name], extra_labels, extra_planes, read=read)
        return examples


def _folders_chosen(image_dir: Any, labels_dir: Any) -> bool:
    """Whether both folder fields hold a folder (an empty field reads as ".")."""
    return all(str(d).strip() and str(d) != "." for d in (image_dir, labels_dir))


def _labelled_planes(labels: Any, description: str) -> list[tuple[int, ...]]:
    """The planes of a labels stack without a corrected list that hold labels: an empty one was
    most likely never segmented nor drawn (a stack segmented slice by slice), and would teach the
    model that there are no cells there. Those left out are said once."""
    from napari_unet.io._corrected import planes_holding_labels

    kept = planes_holding_labels(full_resolution(labels))
    if note := empty_slices_note(description, len(kept), full_resolution(labels).shape):
        notify_info(note)
    return kept


def _images_without_labels(image_dir: Path, labels_dir: Path) -> list[str]:
    """Names of the images of ``image_dir`` that got no labels file (and are no labels file)."""
    from napari_unet.io import pair_images_with_labels
    from napari_unet.io._formats import list_plane_files

    pairs = pair_images_with_labels(image_dir, labels_dir)
    used = {p for pair in pairs for p in pair}
    return [p.name for p in list_plane_files(image_dir) if p not in used]

"""What the Segment widget keeps of its runs, per masks layer: one record per layer object.

Moving Threshold or Min. size re-thresholds the probabilities kept from the last runs instead of
running the network again, and the object tools split along them. For each masks layer the
record holds those probabilities (within a memory cap shared by all layers, the planes segmented
longest ago dropped first), a checksum of each plane as it was written (a plane the user edited
since keeps the edits), the planes whose probabilities were dropped (so that a re-threshold can
say which planes it cannot reach), and whether the layer's last run made 3D objects (those are
not re-thresholded plane by plane).

Records are keyed by the layer object behind any napari proxy, never by name: a renamed layer
keeps its record, and a new layer that takes a removed one's name starts empty.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ._napari_compat import unwrap_proxy

Plane = tuple[int, ...]


@dataclass
class _Record:
    layer: weakref.ref
    results: dict[Plane, Any] = field(default_factory=dict)  # index -> PlaneResult
    written: dict[Plane, int] = field(default_factory=dict)  # index -> checksum of the plane as written
    dropped: set[Plane] = field(default_factory=set)
    three_d: bool = False


class KeptResults:
    """Per masks layer, the results of the planes segmented into it (see the module's docstring)."""

    def __init__(self, cap_bytes: int) -> None:
        self.cap_bytes = int(cap_bytes)
        self._records: dict[int, _Record] = {}
        self._order: OrderedDict[tuple[int, Plane], None] = OrderedDict()  # least recently kept first

    def _record(self, layer: Any, create: bool = False) -> _Record | None:
        layer = unwrap_proxy(layer)
        key = id(layer)
        record = self._records.get(key)
        if record is not None and record.layer() is not layer:  # a dead layer's id, reused
            self._drop_record(key)
            record = None
        if record is None and create:
            record = self._records[key] = _Record(weakref.ref(layer))
        return record

    def _drop_record(self, key: int) -> None:
        record = self._records.pop(key, None)
        if record is not None:
            for index in record.results:
                self._order.pop((key, index), None)

    # ------------------------------------------------------------------ writing
    def keep(self, layer: Any, result: Any, checksum: int) -> None:
        """``result`` (a PlaneResult with its probabilities) was written into ``layer``, whose
        plane then had ``checksum``; drops the oldest kept planes of any layer beyond the cap."""
        record = self._record(layer, create=True)
        key = id(unwrap_proxy(layer))
        record.three_d = False
        record.results[result.index] = result
        record.written[result.index] = checksum
        record.dropped.discard(result.index)
        self._order.pop((key, result.index), None)
        self._order[(key, result.index)] = None
        total = sum(r.probabilities.nbytes for rec in self._records.values() for r in rec.results.values())
        while total > self.cap_bytes and len(self._order) > 1:
            (old_key, index), _ = self._order.popitem(last=False)
            old = self._records[old_key]
            total -= old.results.pop(index).probabilities.nbytes
            old.written.pop(index, None)
            old.dropped.add(index)

    def made_3d(self, layer: Any) -> None:
        """``layer`` now holds 3D objects: its planes' kept results no longer describe it."""
        self.forget(layer)
        self._record(layer, create=True).three_d = True

    def forget(self, layer: Any) -> None:
        """Drop everything kept for ``layer`` (removed, or filled by other means)."""
        self._drop_record(id(unwrap_proxy(layer)))

    # ------------------------------------------------------------------ reading
    def result(self, layer: Any, index: Plane) -> Any:
        """The last result written to plane ``index`` of ``layer`` (None when not kept)."""
        record = self._record(layer)
        return None if record is None else record.results.get(tuple(index))

    def results(self, layer: Any) -> list[Any]:
        """The kept results of ``layer``, oldest first."""
        record = self._record(layer)
        if record is None:
            return []
        key = id(unwrap_proxy(layer))
        return [record.results[index] for k, index in self._order if k == key]

    def written(self, layer: Any, index: Plane) -> int | None:
        """Checksum of plane ``index`` of ``layer`` as it was written (None when not kept)."""
        record = self._record(layer)
        return None if record is None else record.written.get(tuple(index))

    def dropped(self, layer: Any) -> list[Plane]:
        """Planes of ``layer`` whose probabilities were dropped for the memory cap, sorted."""
        record = self._record(layer)
        return [] if record is None else sorted(record.dropped)

    def is_3d(self, layer: Any) -> bool:
        """Whether the last run into ``layer`` made 3D objects."""
        record = self._record(layer)
        return record is not None and record.three_d

    def __bool__(self) -> bool:
        return bool(self._order)

"""What the Segment widget keeps of its runs, per masks layer: one record per layer object.

Moving Threshold or Min. size re-thresholds the probabilities kept from the last runs instead of
running the network again, and the object tools split along them. For each masks layer the
record holds those probabilities (within a memory cap shared by all layers, the planes segmented
longest ago dropped first), a checksum of each plane as it was written (a plane the user edited
since keeps the edits), the planes whose probabilities were dropped (so that a re-threshold can
say which planes it cannot reach), and whether the layer's last run made 3D objects (those are
not re-thresholded plane by plane).

Records are keyed by the layer object behind any napari proxy, never by name: a renamed layer
keeps its record, and a new layer that takes a removed one's name starts empty. Within a record,
a result is kept per plane and region: fields of view of one plane segmented one after the
other are all kept (a later result drops those whose region it covers).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from ._napari_compat import unwrap_proxy

Plane = tuple[int, ...]
Region = tuple[tuple[int, int], tuple[int, int]]
Key = tuple[Plane, Region]  # a plane's index and the region of it a result covers


def _key(result: Any) -> Key:
    rows, cols = result.region
    return tuple(result.index), ((rows.start, rows.stop), (cols.start, cols.stop))


def _covers(outer: Region, inner: Region) -> bool:
    def within(o: tuple[Any, Any], i: tuple[Any, Any]) -> bool:
        lo, hi = o
        return (lo is None or (i[0] is not None and i[0] >= lo)) and (hi is None or (i[1] is not None and i[1] <= hi))
    return within(outer[0], inner[0]) and within(outer[1], inner[1])


@dataclass
class _Record:
    layer: weakref.ref
    results: dict[Key, Any] = field(default_factory=dict)  # (index, region) -> PlaneResult
    written: dict[Key, int] = field(default_factory=dict)  # (index, region) -> checksum of it as written
    dropped: set[Plane] = field(default_factory=set)
    too_large: set[Plane] = field(default_factory=set)  # planes whose probabilities alone exceed the cap
    three_d: bool = False
    #: 3D objects were written into the layer (ids shared by planes), whatever ran after
    held_3d: bool = False


class KeptResults:
    """Per masks layer, the results of the planes segmented into it (see the module's docstring)."""

    def __init__(self, cap_bytes: int) -> None:
        self.cap_bytes = int(cap_bytes)
        self._records: dict[int, _Record] = {}
        self._order: OrderedDict[tuple[int, Key], None] = OrderedDict()  # least recently kept first

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
            for k in record.results:
                self._order.pop((key, k), None)

    # ------------------------------------------------------------------ writing
    def keep(self, layer: Any, result: Any, checksum: int) -> None:
        """``result`` (a PlaneResult with its probabilities) was written into ``layer``, whose
        plane then had ``checksum``; drops the oldest kept planes of any layer beyond the cap. Its
        labels are not kept (the layer holds them; re-thresholding makes new ones): the cap counts
        the probabilities only, and 12 planes of 1024^2 kept 48 MB of labels beside its 72 MB."""
        result = replace(result, labels=None)
        record = self._record(layer, create=True)
        key = id(unwrap_proxy(layer))
        record.three_d = False
        new = _key(result)
        if new in record.results:  # the same region again (re-thresholded): its place in the order stays
            record.results[new], record.written[new] = result, checksum
            return
        for old in [k for k in record.results if k[0] == new[0] and _covers(new[1], k[1])]:  # overwritten
            record.results.pop(old)
            record.written.pop(old, None)
            self._order.pop((key, old), None)
        if result.probabilities.nbytes > self.cap_bytes:  # one plane beyond the cap (a whole slide): not kept
            record.too_large.add(new[0])
            record.dropped.discard(new[0])
            return
        record.too_large.discard(new[0])
        record.results[new] = result
        record.written[new] = checksum
        record.dropped.discard(new[0])
        self._order[(key, new)] = None
        total = sum(r.probabilities.nbytes for rec in self._records.values() for r in rec.results.values())
        while total > self.cap_bytes and len(self._order) > 1:
            (old_key, old), _ = self._order.popitem(last=False)
            rec = self._records[old_key]
            total -= rec.results.pop(old).probabilities.nbytes
            rec.written.pop(old, None)
            rec.dropped.add(old[0])

    def overlapping(self, layer: Any, result: Any) -> list[Any]:
        """The other kept results of ``result``'s plane whose regions share pixels with its region."""
        region = _key(result)[1]

        def shares(other: Region) -> bool:
            return all(lo < o_hi and o_lo < hi for (lo, hi), (o_lo, o_hi) in zip(region, other))
        return [other for other in self.results_of_plane(layer, result.index)
                if other is not result and shares(_key(other)[1])]

    def rewritten(self, layer: Any, result: Any, checksum: int) -> None:
        """A run (not the user) changed part of the region of a kept ``result``: its checksum now."""
        record = self._record(layer)
        if record is not None and _key(result) in record.written:
            record.written[_key(result)] = checksum

    def made_3d(self, layer: Any) -> None:
        """``layer`` now holds 3D objects: its planes' kept results no longer describe it."""
        self.forget(layer)
        record = self._record(layer, create=True)
        record.three_d = record.held_3d = True

    def forget(self, layer: Any) -> None:
        """Drop everything kept for ``layer`` (removed, or filled by other means)."""
        self._drop_record(id(unwrap_proxy(layer)))

    # ------------------------------------------------------------------ reading
    def result(self, layer: Any, index: Plane) -> Any:
        """The last result written to plane ``index`` of ``layer`` (None when not kept)."""
        of_plane = self.results_of_plane(layer, index)
        return of_plane[0] if of_plane else None

    def results_of_plane(self, layer: Any, index: Plane) -> list[Any]:
        """The kept results of plane ``index`` of ``layer`` (its regions), the last written first."""
        key, index = id(unwrap_proxy(layer)), tuple(index)
        record = self._record(layer)
        if record is None:
            return []
        return [record.results[k] for lk, k in reversed(self._order) if lk == key and k[0] == index]

    def results(self, layer: Any) -> list[Any]:
        """The kept results of ``layer``, oldest first."""
        record = self._record(layer)
        if record is None:
            return []
        key = id(unwrap_proxy(layer))
        return [record.results[k] for lk, k in self._order if lk == key]

    def written(self, layer: Any, result: Any) -> int | None:
        """Checksum of the region of ``layer`` that ``result`` covers, as it was written (None when
        not kept)."""
        record = self._record(layer)
        return None if record is None else record.written.get(_key(result))

    def too_large(self, layer: Any) -> list[Plane]:
        """Planes of ``layer`` whose probabilities alone exceed the cap (never kept), sorted."""
        record = self._record(layer)
        return [] if record is None else sorted(record.too_large)

    def dropped(self, layer: Any) -> list[Plane]:
        """Planes of ``layer`` whose probabilities were dropped for the memory cap, sorted."""
        record = self._record(layer)
        return [] if record is None else sorted(record.dropped)

    def is_3d(self, layer: Any) -> bool:
        """Whether the last run into ``layer`` made 3D objects."""
        record = self._record(layer)
        return record is not None and record.three_d

    def held_3d(self, layer: Any) -> bool:
        """Whether a run wrote 3D objects into ``layer`` (its other planes may hold their ids)."""
        record = self._record(layer)
        return record is not None and record.held_3d

    def __bool__(self) -> bool:
        return bool(self._order)

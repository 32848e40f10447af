"""Which consumed offsets may be committed: per partition, up to the oldest unfinished one."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from .records import TP


@dataclass
class _Partition:
    open: set[int] = field(default_factory=set)
    open_heap: list[int] = field(default_factory=list)  # may hold finished offsets (lazily)
    done_heap: list[int] = field(default_factory=list)  # finished, behind an open one

    def oldest_open(self) -> int | None:
        while self.open_heap and self.open_heap[0] not in self.open:
            heapq.heappop(self.open_heap)
        return self.open_heap[0] if self.open_heap else None


class OffsetTracker:
    """Per partition, the offsets handed to the service and which of them are finished.

    Jobs finish out of order; a partition's committable offset is the oldest unfinished
    offset (or one past the newest when all are finished), so a crash redelivers every
    command whose job has not reached its terminal event. Both sets are heaps, so a finish
    costs O(log n) however long one job holds the partition back.
    """

    def __init__(self) -> None:
        self._parts: dict[TP, _Partition] = {}

    def add(self, tp: TP, offset: int) -> None:
        part = self._parts.setdefault(tp, _Partition())
        if offset not in part.open:
            part.open.add(offset)
            heapq.heappush(part.open_heap, offset)

    def finish(self, tp: TP, offset: int) -> int | None:
        """Mark an offset finished; return the partition's new committable offset, if any."""
        part = self._parts.get(tp)
        if part is None or offset not in part.open:
            return None
        part.open.discard(offset)
        heapq.heappush(part.done_heap, offset)
        oldest = part.oldest_open()
        committable: int | None = None
        while part.done_heap and (oldest is None or part.done_heap[0] < oldest):
            committable = heapq.heappop(part.done_heap) + 1
        return committable

    def forget(self, tps: list[TP]) -> None:
        for tp in tps:
            self._parts.pop(tp, None)

    def unfinished(self) -> int:
        return sum(len(part.open) for part in self._parts.values())

    def oldest_unfinished(self, tp: TP) -> int | None:
        part = self._parts.get(tp)
        return part.oldest_open() if part is not None else None

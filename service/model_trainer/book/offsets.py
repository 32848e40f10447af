"""Which consumed offsets may be committed: per partition, up to the oldest unfinished one."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from model_trainer.book.records import TP


@dataclass
class _Partition:
    committed: int  # the committable offset last handed out (or the first offset seen)
    finished_to: int  # one past the newest finished offset
    open: set[int] = field(default_factory=set)
    open_heap: list[int] = field(default_factory=list)  # may hold finished offsets (lazily)

    def oldest_open(self) -> int | None:
        while self.open_heap and self.open_heap[0] not in self.open:
            heapq.heappop(self.open_heap)
        return self.open_heap[0] if self.open_heap else None


class OffsetTracker:
    """Per partition, the offsets handed to the service and which of them are unfinished.

    Jobs finish out of order; a partition's committable offset is its oldest unfinished
    offset (or one past the newest finished when none is unfinished), so a crash redelivers
    every command whose job has not reached its terminal event. Offsets arrive in order and
    every one is added before it is finished, so every offset below the oldest unfinished one
    is finished (or a transaction marker): only the unfinished are kept. Memory is O(unfinished
    commands) — bounded by the queue and the workers — however many finish behind a long job;
    a finish costs O(log n).
    """

    def __init__(self) -> None:
        self._parts: dict[TP, _Partition] = {}

    def add(self, tp: TP, offset: int) -> None:
        part = self._parts.setdefault(tp, _Partition(committed=offset, finished_to=offset))
        if offset not in part.open:
            part.open.add(offset)
            heapq.heappush(part.open_heap, offset)

    def finish(self, tp: TP, offset: int) -> int | None:
        """Mark an offset finished; return the partition's new committable offset, if any."""
        part = self._parts.get(tp)
        if part is None or offset not in part.open:
            return None
        part.open.discard(offset)
        part.finished_to = max(part.finished_to, offset + 1)
        if len(part.open_heap) > 2 * len(part.open) + 64:  # drop the lazily kept finished
            part.open_heap = sorted(part.open)  # a sorted list is a heap
        oldest = part.oldest_open()
        target = part.finished_to if oldest is None else min(oldest, part.finished_to)
        if target <= part.committed:
            return None
        part.committed = target
        return target

    def forget(self, tps: list[TP]) -> None:
        for tp in tps:
            self._parts.pop(tp, None)

    def unfinished(self) -> int:
        return sum(len(part.open) for part in self._parts.values())

    def oldest_unfinished(self, tp: TP) -> int | None:
        part = self._parts.get(tp)
        return part.oldest_open() if part is not None else None

    def held(self) -> int:
        """Offsets held in memory, all partitions (what the bound above is about)."""
        return sum(len(part.open) + len(part.open_heap) for part in self._parts.values())

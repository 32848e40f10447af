"""One way to hold a Kafka client for the span of an ``async with``."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class StartStop:
    """An async context made of :meth:`start` and :meth:`stop`: a start that fails is
    stopped again before the error goes on (or aiokafka warns of an unclosed client)."""

    async def start(self) -> None:
        """Acquire what the context holds (override)."""

    async def stop(self) -> None:
        """Release it; called after a failed start too, so it must not assume one (override)."""

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

"""``Ballast``: memory held on purpose, for tests that need real pressure.

Served only when ``AGENTHOST_MEMORY_TEST_ALLOCATIONS=true`` (never in production): the
pressure tests grow this process by a known amount and release it, so every level and the
recovery from it are reached by real memory, not by a mocked reading.
"""

from __future__ import annotations

MIB = 2**20


class Ballast:
    def __init__(self) -> None:
        self._blocks: list[bytearray] = []

    @property
    def bytes(self) -> int:
        return sum(len(block) for block in self._blocks)

    def grow(self, mb: int) -> int:
        """Hold ``mb`` more MiB, every page written (a zeroed block may not be resident)."""
        self._blocks.append(bytearray(b"\x5a") * (mb * MIB))
        return self.bytes

    def release(self) -> int:
        released = self.bytes
        self._blocks.clear()
        return released

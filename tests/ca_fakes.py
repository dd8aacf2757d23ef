"""Fakes for CA tests (unit and integration)."""

from __future__ import annotations

from collections.abc import Callable

from trustd.ca.kms.base import KeyAlgorithm, KeyRef
from trustd.ca.kms.memory import MemoryKeyManager


class RacingKeyManager(MemoryKeyManager):
    """Shares another key manager's keys; ``meanwhile`` runs once while a key is created,
    that is between the manager's read of the slots and its compare-and-set."""

    def __init__(self, shared: MemoryKeyManager) -> None:
        super().__init__()
        self._keys = shared._keys
        self.meanwhile: Callable[[], object] | None = None

    def create_key(self, name: str, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256) -> KeyRef:
        ref = super().create_key(name, algorithm)
        run, self.meanwhile = self.meanwhile, None
        if run is not None:
            run()  # the other server commits between this one's read and its write
        return ref

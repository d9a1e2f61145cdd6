"""memstream.memory: the shared memory core (explicit fixed-size state, memory types, training helpers)."""

from memstream.memory.config import MEMORY_TYPES, CoreConfig
from memstream.memory.core import MemoryCore, NoneState, reset_state
from memstream.memory.knn import KnnState
from memstream.memory.ntm import NtmState
from memstream.memory.queue import QueueState
from memstream.memory.slots import SlotsState
from memstream.memory.tokens import TokensState

__all__ = [
    "MEMORY_TYPES", "CoreConfig", "MemoryCore", "reset_state",
    "QueueState", "TokensState", "SlotsState", "KnnState", "NtmState", "NoneState",
]

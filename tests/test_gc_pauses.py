"""`freeze_startup_objects`: what lived at start-up leaves the collector's walks; what comes later
is still collected."""

import gc
import weakref

import pytest

from protos.gc_pauses import freeze_startup_objects


@pytest.fixture
def unfrozen_after():
    yield
    gc.unfreeze()  # the rest of the test session collects as before


class Node:
    def __init__(self) -> None:
        self.other = self


def test_start_up_objects_are_frozen_and_later_garbage_is_still_collected(unfrozen_after):
    alive_at_start = Node()
    frozen = freeze_startup_objects("test")
    assert frozen == gc.get_freeze_count() and frozen > 1000  # this process's imports at least
    assert alive_at_start not in gc.get_objects()  # moved out of every generation the collector walks

    later = Node()  # a reference cycle made after start-up
    gone = weakref.ref(later)
    del later
    gc.collect()
    assert gone() is None

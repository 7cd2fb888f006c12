"""`freeze_startup_objects`: what lived at start-up leaves the collector's walks; what comes later
is still collected."""

import gc
import weakref

import pytest

from protos.gc_pauses import freeze_startup_objects, thaw_startup_objects


@pytest.fixture
def unfrozen_after():
    yield
    thaw_startup_objects()  # the rest of the test session collects as before
    assert gc.get_freeze_count() == 0


class Node:
    def __init__(self) -> None:
        self.other = self


def test_start_up_objects_are_frozen_and_later_garbage_is_still_collected(unfrozen_after):
    alive_at_start = Node()
    frozen = freeze_startup_objects("test")
    assert frozen > 1000  # this process's imports at least (others may free some of them meanwhile)
    assert all(o is not alive_at_start for o in gc.get_objects())  # moved out of every generation the collector walks

    later = Node()  # a reference cycle made after start-up
    gone = weakref.ref(later)
    del later
    gc.collect()
    assert gone() is None

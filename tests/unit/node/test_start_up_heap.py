import gc

from chiefofstate.node.gc_tuning import freeze_start_up_heap


def test_the_start_up_heap_is_frozen_out_of_full_collections() -> None:
    before = gc.get_freeze_count()
    try:
        freeze_start_up_heap()
        frozen = gc.get_freeze_count()
        assert frozen > before
        # a full collection no longer walks what was frozen: far fewer tracked objects remain
        assert len(gc.get_objects()) < frozen
    finally:
        gc.unfreeze()

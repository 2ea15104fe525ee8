"""Child processes for tests/test_serving_crash.py: save a served index and get SIGKILLed at a chosen point, or
save in a loop until the parent SIGKILLs it at a random moment. The kill hooks live here, never in the library.

Run directly: ``python -m tests.serving_crash_child SOURCE DEST POINT`` (POINT: one of KILL_POINTS or ``loop``).
"""

from __future__ import annotations

import os
import signal
import sys

import torch

KILL_POINTS = ("vectors_written", "index_written", "before_swap", "after_swap")


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def variant(index, version: int):
    """A served index whose row 0 holds ``version`` (so every save of a new version differs from the last)."""
    from hf_corrector import StaleCache
    from hf_corrector.serving import CorrectedIndex

    vectors = index.vectors
    matrix = vectors.matrix().clone().float()
    matrix[0] = torch.nn.functional.normalize(torch.full((vectors.dim,), float(version)) + torch.arange(vectors.dim),
                                              dim=0)
    steps = vectors.steps.clone()
    steps[0] = version
    new = StaleCache(vectors.doc_ids, matrix, steps=steps, provenance=vectors.provenance, dtype=vectors.dtype)
    return CorrectedIndex(new, show_progress_bar=False)


def main(source: str, dest: str, point: str) -> None:
    torch.set_num_threads(1)
    import hf_corrector.serving.storage as storage
    from hf_corrector.serving import CorrectedIndex

    index = CorrectedIndex.load(source)
    if point == "loop":
        version = 1
        while True:
            variant(index, version).save(dest)
            print(f"saved {version}", flush=True)
            version += 1
    original_write_file, original_exchange = storage.write_file, storage._exchange

    def write_file(path, data):
        original_write_file(path, data)
        if (point == "index_written" and path.name == storage.INDEX_FILE) or point == "vectors_written":
            _die()  # vectors_written: the vectors folder is complete, the index not yet written

    def exchange(a, b):
        if point == "before_swap":
            _die()
        done = original_exchange(a, b)
        if point == "after_swap":
            _die()  # swapped, the old folder not yet removed
        return done

    storage.write_file, storage._exchange = write_file, exchange
    if point in ("before_swap", "after_swap"):
        original_rename = os.rename

        def rename(a, b, *args, **kwargs):  # a first save (nothing to swap with), or no renameat2
            ours = ".served-tmp-" in os.path.basename(a)
            if point == "before_swap" and ours:
                _die()
            original_rename(a, b, *args, **kwargs)
            if ours:
                _die()

        os.rename = rename
    variant(index, 7).save(dest)


if __name__ == "__main__":
    main(*sys.argv[1:4])

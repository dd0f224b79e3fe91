"""Freed memory goes back to the OS after a passing piece of work (glibc's malloc_trim)."""

from __future__ import annotations

import platform
import threading

import pytest

from rtc.heap import release_free_memory


def resident_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_what_a_worker_thread_freed_is_returned() -> None:
    survivors: list[bytearray] = []

    def passing_work() -> None:
        # Many mid-sized blocks, as a rollup's rows, malloc'd in this thread's arena; a few
        # outlive the work, so the free ones between them cannot shrink the arena's top.
        blocks = [bytearray(2048) for _ in range(40_000)]  # ~80 MiB
        survivors.extend(blocks[::16])

    worker = threading.Thread(target=passing_work)
    worker.start()
    worker.join(timeout=30)
    before = resident_kib()
    assert release_free_memory()
    assert resident_kib() < before - 40 * 1024  # most of the ~80 MiB came back
    assert len(survivors) == 2_500  # and what was kept is intact

"""Small pure pieces of export: CPU flag detection and batch plans (the default-variant rule is
tested with the manifest, tests/test_manifest.py)."""

from __future__ import annotations

from deploykit.export import parity, quantize


def test_vnni_detection_from_cpuinfo():
    assert quantize.cpu_has_vnni("flags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    assert quantize.cpu_has_vnni("flags\t\t: fpu avx2 avx_vnni\n")
    assert not quantize.cpu_has_vnni("flags\t\t: fpu sse avx2 avx512f\n")
    assert quantize.choose_reduce_range("on") is True and quantize.choose_reduce_range("off") is False
    assert quantize.choose_reduce_range("auto") is (not quantize.cpu_has_vnni())


def test_batches_cycle_through_sizes_and_cover_every_row():
    parts = parity.batches(20, [1, 7, 64])
    assert [(p.start, p.stop) for p in parts] == [(0, 1), (1, 8), (8, 20)]
    assert parity.batches(0, [3]) == []


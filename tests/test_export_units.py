"""Small pure pieces of export: CPU flag detection, batch plans, the default-variant rule."""

from __future__ import annotations

from deploykit.export import manifest, parity, quantize


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


def test_default_variant_rule():
    v = {"fp32": {"servable": True}, "opt": {"servable": True}, "int8": {"servable": False}}
    assert manifest.default_variant(v) == "opt"
    assert manifest.default_variant(v, "fp32") == "fp32"
    assert manifest.default_variant({"fp32": {"servable": False}, "opt": {"servable": False}}) == "opt"

"""bench.common.write_section: each benchmark script owns one section of docs/PERFORMANCE.md."""

from bench.common import Load, write_section

BEFORE, AFTER = Load(0.5, 0.4, 0.3, 2, 2), Load(1.5, 0.6, 0.3, 2, 2)


def test_a_section_is_appended_then_replaced_and_the_rest_kept(tmp_path):
    doc = tmp_path / "PERFORMANCE.md"
    doc.write_text("# Performance\n\nHand-written intro.\n\n<!-- bench:other -->\nkept\n<!-- /bench:other -->\n")
    write_section("speed", "Model speed", "| a | b |\n|---|---|\n| 1 | 2 |", BEFORE, AFTER, doc=doc)
    first = doc.read_text()
    assert first.startswith("# Performance\n\nHand-written intro.") and "kept" in first
    section = first[first.index("<!-- bench:speed -->"):]
    assert section.startswith("<!-- bench:speed -->\n### Model speed\n\nMeasured ")
    assert "| 1 | 2 |" in section and "Load average (1 min) 0.50 before, 1.50 after" in section
    assert section.rstrip().endswith("<!-- /bench:speed -->")

    write_section("speed", "Model speed", "| 3 | 4 |", BEFORE, AFTER, level=4, doc=doc)
    second = doc.read_text()
    assert second.count("<!-- bench:speed -->") == 1 and "| 1 | 2 |" not in second and "| 3 | 4 |" in second
    assert "#### Model speed" in second and "Hand-written intro." in second and "kept" in second

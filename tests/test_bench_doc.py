"""bench.common: each benchmark script owns one section of docs/PERFORMANCE.md and says what it ran on."""

from pathlib import Path

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


def test_the_machine_line_tells_cpus_of_one_name_apart(tmp_path):
    """Cloud VMs call both a Zen 3 (AVX2) and a Zen 4 (AVX-512) "AMD EPYC"; their model speeds differ
    twofold, so the figures must say which one ran them."""
    from bench.common import cpu_model

    info = tmp_path / "cpuinfo"
    first = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: {fam}\nmodel\t\t: {model}\n" \
            "model name\t: AMD EPYC\nflags\t\t: fpu sse2 {flags}\n\n"
    info.write_text(first.format(fam=25, model=1, flags="avx2 fma") + first.format(fam=99, model=9, flags=""))
    assert cpu_model(info) == "AMD EPYC, family 25 model 1, AVX2"  # the first processor's fields
    info.write_text(first.format(fam=25, model=17, flags="avx2 avx512f avx512bw"))
    assert cpu_model(info) == "AMD EPYC, family 25 model 17, AVX-512"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\n")
    assert cpu_model(info) == "Some CPU, no AVX2"


def test_the_scratch_filesystem_is_the_longest_mount_point_above_it(tmp_path):
    """The host's CPU per image depends on the filesystem its files go to (ext4 without a journal costs
    ~1 ms per new file after a cleanup), so the throughput figures say which one it was."""
    from bench.common import filesystem_of

    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/vda / ext4 rw 0 0\n/dev/loop0 /mnt/j ext4 rw 0 0\n"
                      "tmpfs /mnt/jobs tmpfs rw 0 0\n/dev/sdb /mnt/my\\040disk xfs rw 0 0\n")
    assert filesystem_of(Path("/mnt/j/perf/run1"), mounts) == "ext4 (/dev/loop0 at /mnt/j)"
    assert filesystem_of(Path("/mnt/jobs"), mounts) == "tmpfs (tmpfs at /mnt/jobs)"  # not /mnt/j's
    assert filesystem_of(Path("/mnt/my disk/x"), mounts) == "xfs (/dev/sdb at /mnt/my disk)"
    assert filesystem_of(Path("/srv/data"), mounts) == "ext4 (/dev/vda at /)"
    assert filesystem_of(Path("/srv"), tmp_path / "no-such-file") == "unknown (? at ?)"


def test_the_file_creation_probe_writes_new_files_and_keeps_them(tmp_path):
    from bench.common import file_create_ms

    ms = file_create_ms(tmp_path / "probe", files=20, size=1000)
    files = sorted((tmp_path / "probe").iterdir())
    assert ms > 0 and len(files) == 20 and all(f.stat().st_size == 1000 for f in files)

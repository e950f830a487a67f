import numpy as np
import pytest

from nscfate.audit import MARGIN, audit, audit_arrays, format_report


@pytest.fixture(scope="module")
def synth_sets(tmp_path_factory):
    from nscfate.synth import SynthConfig, write_dataset

    root = tmp_path_factory.mktemp("audit")
    write_dataset(SynthConfig(per_class=120, seed=3), root / "clean")
    write_dataset(SynthConfig(per_class=120, seed=3, confound="background"), root / "confound")
    return root


def test_flags_the_background_confound(synth_sets):
    report = audit(synth_sets / "confound", max_images=480)
    background = next(r for r in report.results if r.name == "background")
    assert background.flagged and report.flagged
    assert background.per_class_recall["oligo"] > 0.9
    text = format_report(report)
    assert "SHORTCUT" in text and "oligo" in text


def test_quiet_on_a_clean_set(synth_sets):
    report = audit(synth_sets / "clean", max_images=480)
    assert not report.flagged and report.warnings == ()
    assert "no shortcut found" in format_report(report)
    reference = next(r for r in report.results if r.name == "size_intensity")
    assert not reference.shortcut_check and not reference.flagged
    assert report.conclusive and report.to_dict()["conclusive"]


def test_a_few_images_cannot_clear_a_dataset(synth_sets):
    report = audit(synth_sets / "clean", max_images=24)  # 8 test images
    assert not report.flagged and not report.conclusive
    text = format_report(report)
    assert "too few images to tell" in text and "no shortcut found" not in text
    from nscfate.cli import main

    assert main(["audit", str(synth_sets / "clean"), "--max-images", "24"]) == 0
    assert main(["audit", str(synth_sets / "clean"), "--max-images", "24", "--strict"]) == 3  # a gate does not pass
    assert main(["audit", str(synth_sets / "clean"), "--max-images", "480", "--strict"]) == 0


def test_copies_of_one_picture_are_reported(synth_sets, tmp_path, caplog):
    import logging
    import shutil

    from nscfate.cli import main

    data = tmp_path / "clean"
    shutil.copytree(synth_sets / "clean", data)
    original = sorted((data / "astro").iterdir())[0]
    shutil.copy(original, data / "astro" / "x-copy.ome.tif")
    report = audit(data, max_images=24)
    assert report.copies["images"] == 2 and report.copies["examples"] == [[f"astro/{original.name}", "astro/x-copy.ome.tif"]]
    assert "COPIES: 2 images are copies of another image" in format_report(report)
    with caplog.at_level(logging.WARNING, logger="nscfate.audit"):
        assert main(["audit", str(data), "--max-images", "24", "--json"]) == 0
    assert "COPIES: 2 images" in caplog.text  # said with --json too
    assert audit(synth_sets / "clean", max_images=24).copies["images"] == 0


def test_an_unreadable_file_is_left_out_and_named_not_the_end_of_the_audit(synth_sets, tmp_path):
    import shutil

    data = tmp_path / "clean"
    shutil.copytree(synth_sets / "clean", data)
    broken = data / "astro" / "a_broken_Ch1.tif"
    broken.write_bytes(b"junk")
    report = audit(data, max_images=480)  # every image: the broken one is among them
    assert report.unreadable == (str(broken),)
    assert f"UNREADABLE: 1 image(s) could not be decoded and were left out, e.g. {broken}" in format_report(report)


def test_crop_size_artefact_is_flagged():
    rng = np.random.default_rng(0)

    def crop(h):
        img = np.full((h, 60), 0.4, np.float32) + rng.normal(0, 0.01, (h, 60)).astype(np.float32)
        img[h // 2 - 5:h // 2 + 5, 25:35] = 0.2
        return img

    images = [crop(40 if i % 2 else 56) for i in range(200)]
    labels = ["astro" if i % 2 else "oligo" for i in range(200)]
    report = audit_arrays(images[:140], labels[:140], images[140:], labels[140:], ["astro", "oligo"])
    crop_size = next(r for r in report.results if r.name == "crop_size")
    assert crop_size.flagged and crop_size.accuracy >= crop_size.chance + MARGIN

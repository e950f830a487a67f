"""The history benchmark runs end to end on a small history: every operation answers and checks its answer
(page totals, CSV line counts, counts after deletes), including a history shorter than 100 pages."""
from bench import history_scale


def test_small_history_runs_every_operation(tmp_path, capsys):
    rows = 1000  # 39 pages of 25 after the deletes: "page 100" would be past the end
    assert history_scale.main(["--rows", str(rows), "--repeats", "2", "--csv-all-repeats", "1",
                               "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"sqlite, {rows:,} rows" in out
    for op in ("first page", "page 39", "last page (39)", "CSV of everything", "delete one prediction"):
        assert op in out

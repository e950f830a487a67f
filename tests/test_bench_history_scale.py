"""The history benchmark runs end to end on a small history: every operation answers and checks its answer
(page totals, CSV line counts, counts after deletes), including a history shorter than 100 pages."""
import pytest

from bench import history_scale


def test_small_history_runs_every_operation(tmp_path, capsys):
    rows = 1000  # 39 pages of 25 after the deletes: "page 100" would be past the end
    assert history_scale.main(["--rows", str(rows), "--repeats", "2", "--csv-all-repeats", "1",
                               "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"sqlite, {rows:,} rows" in out
    for op in ("first page", "page 39", "last page (39)", "CSV of everything", "delete one prediction"):
        assert op in out


@pytest.mark.postgres
def test_postgres_runs_on_a_cluster_of_its_own(tmp_path, capsys, postgres_url):
    # postgres_url: skips where PostgreSQL cannot run; the benchmark starts and removes a cluster of its own
    assert history_scale.main(["--rows", "300", "--repeats", "1", "--csv-all-repeats", "1", "--postgres",
                               "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sqlite, 300 rows" in out and "postgres, 300 rows" in out
    assert out.count("CSV of everything") == 2


def test_table_rows_are_the_same_operation_at_every_size():
    # the doc's table has a row per operation: what differs between sizes (in brackets) must not split it
    assert history_scale._key("experiment = a typical one (E2025-005, 188 rows)") == "experiment = a typical one"
    assert history_scale._key("last page (39,999)") == history_scale._key("last page (399)") == "last page"
    assert history_scale._key("count of the whole history (len of the search)") == "count of the whole history"

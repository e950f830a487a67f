"""Measure reliability and security and write the figures into docs/RELIABILITY.md.

    python scripts/reliability_report.py                 # full run (4-7 min on 2 cores)
    python scripts/reliability_report.py --quick         # small budgets, to try the script
    python scripts/reliability_report.py --check         # exit 1 if the doc's figures are missing

It runs, in this checkout:

1. the bad-input, fault, access, secret and load tests (and the access tests of the other modules that
   issue 7's points rely on) under pytest, the slow ones included, and reads each test's outcome;
2. the fuzz tests with a bigger, randomised budget (``--fuzz-examples`` per target) and counts the cases;
3. ``bench/load_test.py`` (``--clients`` x ``--uploads`` against a host with two workers).

Everything between the ``figures`` markers of docs/RELIABILITY.md is replaced by what this run
measured; nothing in that block is typed by hand.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

log = logging.getLogger("reliability_report")
ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "RELIABILITY.md"
BEGIN, END = "<!-- figures:begin (scripts/reliability_report.py) -->", "<!-- figures:end -->"

RELIABILITY_TESTS = ["tests/test_bad_inputs.py", "tests/test_faults.py", "tests/test_access.py",
                     "tests/test_secrets.py", "tests/test_load.py"]
FUZZ_TESTS = "tests/test_fuzz.py"

#: Issue 7's access points and the tests that cover them (module::function prefix).
ACCESS_POINTS: dict[str, list[str]] = {
    "every route refuses anonymous access except health and sign-in": [
        "test_access::test_every_route_refuses_anonymous_access_except_health_and_sign_in",
        "test_access::test_server_functions_refuse_anonymous_callers",
        "test_http_api::test_everything_else_needs_credentials"],
    "a researcher cannot delete another's rows": [
        "test_access::test_a_researcher_cannot_delete_another_researchers_rows",
        "test_http_api::test_delete_permissions_over_http", "test_server_code::test_delete_permissions"],
    "the uplink endpoint refuses wrong keys; client keys cannot register": [
        "test_hub::test_wrong_key_is_refused", "test_hub::test_client_key_may_call_but_not_register",
        "test_hub_host::test_host_without_a_key_makes_its_own_and_refuses_other_keys"],
    "sessions expire": [
        "test_users::test_sessions_are_random_hashed_and_expire", "test_access::test_sessions_expire_over_http",
        "test_users::test_disabled_accounts_lose_their_sessions",
        "test_http_api::test_change_password_ends_old_sessions", "test_access::test_session_cookie_flags"],
    "CSRF protection on state-changing browser requests": [
        "test_access::test_every_state_changing_route_needs_the_csrf_token",
        "test_http_api::test_browser_session_cookie_and_csrf", "test_http_api::test_cross_site_state_changes_are_refused"],
    "passwords hashed with a modern KDF (argon2id)": [
        "test_users::test_accounts_store_argon2_hashes_and_normalised_emails",
        "test_access::test_production_password_hashing_is_argon2id_with_strong_parameters"],
    "sign-in rate limiting": [
        "test_users::test_rate_limit_per_account_and_address", "test_http_api::test_sign_in_errors_and_rate_limit",
        "test_access::test_http_basic_is_rate_limited_too",
        "test_access::test_sign_in_is_rate_limited_per_address_across_accounts"],
    "filter parameters cannot inject SQL": [
        "test_tables::test_values_are_parameterised", "test_access::test_filter_parameters_cannot_inject_sql",
        "test_fuzz::test_rest_reads_with_random_parameters"],
    "filenames cannot escape the media store": [
        "test_tables::test_media_path_refuses_non_hash_names", "test_server_code::test_filenames_are_cleaned",
        "test_bad_inputs::test_rest_upload[traversal-name]", "test_bad_inputs::test_rest_upload[windows-traversal-name]",
        "test_bad_inputs::test_host_and_worker_kept_running_and_stored_only_hashes",
        "test_access::test_stored_images_are_served_only_as_the_image_type_of_their_bytes"],
    "the worker answers only trusted callers (not browser code or client uplinks)": [
        "test_worker::test_only_trusted_callers_reach_the_worker"],
    "little is held for anyone before authentication": [
        "test_http_api::test_uploads_without_valid_credentials_are_refused_before_the_body_is_read",
        "test_http_api::test_sign_in_routes_take_small_bodies_only",
        "test_hub::test_an_unauthenticated_connection_may_not_pile_up_frames",
        "test_users::test_refused_attempts_do_not_grow_the_rate_limiter"],
    "row ids are never reused (a link or an exported id keeps its prediction)": [
        "test_tables::test_row_ids_are_never_reused",
        "test_tables::test_a_sqlite_database_from_before_never_reused_ids_is_rebuilt_with_its_rows"],
    "no secret in the repository or the logs": [
        "test_secrets::test_no_secret_in_tracked_files", "test_secrets::test_the_scan_finds_planted_secrets",
        "test_secrets::test_no_secret_in_the_logs_of_a_session", "test_anvil_static::test_catches_secrets_and_connect_in_server_code"],
}

FAULTS = {
    "worker killed mid-batch, a second worker connected": "test_faults::test_killed_worker_mid_batch_is_retried_on_another_worker",
    "worker killed mid-batch, alone; then restarted": "test_faults::test_a_killed_lone_worker_is_waited_for_and_its_restart_gets_the_chunk",
    "real `python -m uplink` worker killed mid-batch, restarted": "test_faults::test_killing_the_real_worker_mid_batch_keeps_history_exact",
    "`python -m apphost` stopped with Ctrl-C during use, restarted": "test_faults::test_host_restarted_during_use_loses_nothing_and_keeps_sessions",
    "`python -m apphost` killed with SIGKILL, restarted": "test_faults::test_host_killed_with_sigkill_keeps_every_acknowledged_prediction",
    "database unreachable": "test_faults::test_database_unavailable_is_a_clear_error_and_nothing_is_written",
    "database fails at the INSERT": "test_faults::test_database_failing_at_the_insert_stores_nothing_of_that_chunk",
    "media store disk full (ENOSPC)": "test_faults::test_full_disk_for_the_media_store",
}

FAULT_OUTCOMES = {
    "worker killed mid-batch, a second worker connected": "the chunk is sent again, to the other worker: 200, every image stored exactly once",
    "worker killed mid-batch, alone; then restarted": "the request waits for the restarted worker, which gets the chunk: 200, every image stored exactly once",
    "real `python -m uplink` worker killed mid-batch, restarted": "history = the files reported stored; resending the failed ones gives exactly one row per image",
    "`python -m apphost` stopped with Ctrl-C during use, restarted": "requests in progress finish; every acknowledged upload is in the history once; the worker reconnects by itself; the browser session and its CSRF token still work",
    "`python -m apphost` killed with SIGKILL, restarted": "all 12 acknowledged predictions and their image files are there after the restart (SQLite WAL)",
    "database unreachable": "503 `database_unavailable` + `Retry-After` on every route, also for HTTP Basic (not 401); nothing written",
    "database fails at the INSERT": "the chunks before it stored, it and the rest `storage_unavailable`; the image files of its rolled-back rows are removed",
    "media store disk full (ENOSPC)": "507 `storage_full`, no row, no temp file left; the same files go through once space is back",
}


# --------------------------------------------------------------------------------------------------
# running


def run_pytest(targets: list[str], junit: Path, env: dict[str, str], extra: list[str]) -> int:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--runslow", f"--junitxml={junit}",
           *extra, *targets]
    log.info("running %s", " ".join(cmd[2:]))
    return subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def read_junit(path: Path) -> dict[str, dict]:
    """``module::name`` -> {"outcome": passed|failed|skipped, "seconds": float}."""
    results = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        outcome = "passed"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        results[f"{module}::{case.get('name')}"] = {"outcome": outcome, "seconds": float(case.get("time") or 0)}
    return results


def matching(results: dict[str, dict], prefix: str) -> list[dict]:
    """Results of the test ``prefix`` (a function name matches all its parametrisations)."""
    return [r for k, r in results.items() if k == prefix or (k.startswith(prefix + "[") and "[" not in prefix)]


def summary(results: list[dict]) -> str:
    if not results:
        return "not run"
    counts = defaultdict(int)
    for r in results:
        counts[r["outcome"]] += 1
    if counts["failed"]:
        return f"**FAILED** ({counts['failed']} of {len(results)})"
    if counts["passed"] == 0:
        return "skipped"
    return "passed" + (f" ({counts['passed']} tests)" if len(results) > 1 else "")


# --------------------------------------------------------------------------------------------------
# rendering


def render(results: dict[str, dict], fuzz: dict, load: dict | None, corpus: dict, meta: dict) -> str:
    out = [BEGIN, "",
           f"Measured {meta['date']} on commit `{meta['commit']}`, {meta['machine']}; "
           f"`python scripts/reliability_report.py{meta['args']}` ({meta['minutes']:.1f} min).", ""]

    cases = corpus["cases"]
    n_rej = sum(c["expect"] == "rejected" for c in cases)
    out += ["### Bad input", "",
            f"Corpus (`scripts/make_bad_inputs.py`): **{len(cases)} kinds of upload** ({n_rej} to be rejected with "
            f"a specific code, {len(cases) - n_rej} odd but valid, to be classified) and "
            f"{len(corpus['requests'])} whole-request cases.", "",
            "| entry point | cases | result | what each case asserts |", "|---|---|---|---|"]
    paths = [
        ("REST API, HTTP Basic, one file per request", "test_bad_inputs::test_rest_upload",
         "rejected: 422 + the case's code and a specific message, no history row; valid: 200, one row, clean name, bytes kept"),
        ("web UI path (session cookie + CSRF), all files in one request", "test_bad_inputs::test_request_every_case_at_once",
         "each result as above, rows = valid files"),
        ("worker directly (hub -> `predict_cell_fate`)", "test_bad_inputs::test_worker_directly",
         "rejected: `nscfate.CellImageError` with the code; valid: probabilities sum to 1"),
        ("worker, one `predict_cell_fate_batch` call", "test_bad_inputs::test_worker_batch_with_every_case",
         "per-image error entries in place, the others classified"),
        ("`nscfate predict --json` (Predictor)", "test_bad_inputs::test_cli_predict", "the same code per file"),
    ]
    for what, test, asserts in paths:
        rs = matching(results, test)
        n = len(rs) if len(rs) > 1 else len(cases)
        out.append(f"| {what} | {n} | {summary(rs)} | {asserts} |")
    req_tests = [k for k in results if k.startswith("test_bad_inputs::test_request_")
                 and not k.endswith("every_case_at_once")]
    out.append(f"| whole requests (65 files, 64 files, no file, text fields, broken multipart, raw body, "
               f"1 GB declared) | {len(corpus['requests']) - 1} | {summary([results[k] for k in req_tests])} | "
               "400/413/422 with the code; a full batch gives 64 rows |")
    after = matching(results, "test_bad_inputs::test_host_and_worker_kept_running_and_stored_only_hashes")
    out += ["", f"After the corpus: host and worker still running, no traceback in the worker log, only "
                f"SHA-256-named files in the media store: {summary(after)}.", ""]

    out += ["### Fuzzing (hypothesis)", "",
            f"Randomised run, {fuzz.get('examples_setting')} examples per target "
            f"(CI runs {fuzz['ci_examples']} derandomised).", "",
            "| target | cases run | result |", "|---|---|---|"]
    fuzz_tests = {"decoder: arbitrary bytes": "test_decoder_on_arbitrary_bytes",
                  "decoder: signature + foreign content": "test_decoder_on_a_valid_signature_with_foreign_content",
                  "decoder: mutated valid images": "test_decoder_on_mutated_valid_images",
                  "REST: GET with random filters/paging": "test_rest_reads_with_random_parameters",
                  "REST: item routes with random ids/methods": "test_rest_item_routes_with_random_ids_and_methods",
                  "REST: POST random multipart bodies": "test_rest_upload_with_random_multipart_bodies",
                  "REST: POST random raw bodies": "test_rest_upload_with_random_raw_bodies",
                  "auth: random sign-in/sign-up JSON": "test_auth_routes_with_random_json"}
    for target, test in fuzz_tests.items():
        out.append(f"| {target} | {fuzz.get('cases', {}).get(target, 0):,} | "
                   f"{summary(matching(fuzz.get('results', {}), 'test_fuzz::' + test))} |")
    out += [f"| **total** | **{fuzz.get('total', 0):,}** | |", "",
            "Decoder property: a finite 2-D float32 image within the limits, or an `ImageError`; nothing else. "
            f"Largest traced allocation of one decode (limits {fuzz['limits']['max_bytes'] / 2**20:g} MiB / "
            f"{fuzz['limits']['max_pixels'] / 1e6:g} Mpx): {fuzz.get('decode_traced_bytes', 0) / 1e6:.1f} MB (bound "
            f"asserted: {fuzz['memory_bound'] / 2**20:g} MiB). REST property: never a 5xx, "
            "every refusal in JSON (but the plain 405 of Anvil's own endpoint dispatch), history rows added = "
            "images reported classified.", ""]

    out += ["### Faults", "", "| fault | result | what the caller sees |", "|---|---|---|"]
    for what, test in FAULTS.items():
        out.append(f"| {what} | {summary(matching(results, test))} | {FAULT_OUTCOMES[what]} |")
    out.append("")

    out += ["### Load", ""]
    if load is None:
        out += ["Not run (`--no-load`).", ""]
    else:
        lat = load["latency_ms"]
        out += [f"`bench/load_test.py`: {load['clients']} clients x {load['uploads_per_client']} uploads "
                f"({load['auth']} auth) against the host with {load['workers']} workers; model: "
                f"{load.get('model_note')}.", "",
                "| uploads | answered | stored | errors | history rows | duplicates | missing | p50 ms | p90 ms | "
                "p95 ms | p99 ms | max ms | throughput |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
                f"| {load['requests']} | {load['answered']} | {load['ok']} | {load['errors']} | {load['history_rows']} "
                f"| {load['duplicate_rows']} | {load['missing_rows']} | {lat['p50']} | {lat['p90']} | {lat['p95']} | "
                f"{lat['p99']} | {lat['max']} | {load['throughput_per_s']} uploads/s |", "",
                f"Status codes: {', '.join(f'{k}: {v}' for k, v in load['statuses'].items())}. CI runs a reduced "
                f"version (`tests/test_load.py`): {summary(matching(results, 'test_load::test_concurrent_clients_each_get_exactly_one_row_per_upload'))}.",
                ""]

    out += ["### Access", "", "| point | tests | result |", "|---|---|---|"]
    for point, tests in ACCESS_POINTS.items():
        rs = [r for t in tests for r in matching(results, t)]
        names = "<br>".join(f"`{t.replace('::', '.py::')}`" for t in tests)
        missing = [t for t in tests if not matching(results, t)]  # a renamed test must not pass silently
        result = f"**MISSING** {', '.join(missing)}" if missing else summary(rs)
        out.append(f"| {point} | {names} | {result} |")
    out += ["", END]
    return "\n".join(out)


def write_doc(block: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC} has no figures markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(head + block + tail, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budgets (fuzz 200, load 10 x 5)")
    parser.add_argument("--fuzz-examples", type=int, default=2000, help="fuzz examples per target (default 2000)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--no-load", action="store_true", help="skip bench/load_test.py")
    parser.add_argument("--check", action="store_true", help="only check that the doc holds generated figures")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.check:
        text = DOC.read_text(encoding="utf-8")
        ok = BEGIN in text and END in text and "Measured " in text.split(BEGIN, 1)[1]
        return 0 if ok else 1
    if args.quick:
        args.fuzz_examples, args.clients, args.uploads = 200, 10, 5
    started = dt.datetime.now(dt.timezone.utc)
    load_average = os.getloadavg()[0]  # the machine may be shared: figures are read against this
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    access_modules = sorted({"tests/" + t.split("::")[0] + ".py" for ts in ACCESS_POINTS.values() for t in ts})
    with tempfile.TemporaryDirectory(prefix="nscfate-report-") as tmp:
        tmp = Path(tmp)
        junit, fuzz_junit, fuzz_json = tmp / "tests.xml", tmp / "fuzz.xml", tmp / "fuzz.json"
        targets = sorted(set(RELIABILITY_TESTS) | set(access_modules) - {FUZZ_TESTS})
        run_pytest(targets, junit, env, [])
        results = read_junit(junit)
        run_pytest([FUZZ_TESTS], fuzz_junit, {**env, "NSCFATE_FUZZ_EXAMPLES": str(args.fuzz_examples),
                                              "NSCFATE_FUZZ_RANDOM": "1", "NSCFATE_FUZZ_REPORT": str(fuzz_json)}, [])
        fuzz = json.loads(fuzz_json.read_text()) if fuzz_json.exists() else {}
        fuzz["results"] = read_junit(fuzz_junit)
        results.update({k: v for k, v in fuzz["results"].items() if k.startswith("test_fuzz::test_rest_reads")})
        load = None
        if not args.no_load:
            load_json = tmp / "load.json"
            subprocess.run([sys.executable, str(ROOT / "bench" / "load_test.py"), "--clients", str(args.clients),
                            "--uploads", str(args.uploads), "--out", str(load_json)], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            load = json.loads(load_json.read_text()) if load_json.exists() else None
        sys.path.insert(0, str(ROOT / "scripts"))
        from make_bad_inputs import build_corpus

        corpus = build_corpus(tmp / "corpus", include_big=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    args_text = " --quick" if args.quick else (f" --fuzz-examples {args.fuzz_examples} --clients {args.clients} "
                                               f"--uploads {args.uploads}" if (args.fuzz_examples, args.clients,
                                                                                 args.uploads) != (2000, 50, 20) else "")
    meta = {"date": started.strftime("%Y-%m-%d"), "commit": commit + ("+changes" if dirty else ""),
            "machine": (f"{os.cpu_count()} CPU cores (load average {load_average:.1f} at the start, "
                        f"{os.getloadavg()[0]:.1f} at the end), Python {platform.python_version()}"),
            "args": args_text, "minutes": (dt.datetime.now(dt.timezone.utc) - started).total_seconds() / 60}
    write_doc(render(results, fuzz, load, corpus, meta))
    failed = [k for k, r in {**results, **fuzz["results"]}.items() if r["outcome"] == "failed"]
    clean_load = load is None or (load["errors"] == 0 and load["rows_match_uploads"])
    log.info("wrote %s: %d tests, %d failed, %d fuzz cases%s", DOC.relative_to(ROOT), len(results), len(failed),
             fuzz.get("total", 0), "" if clean_load else "; the load test had errors")
    for k in failed:
        log.error("failed: %s", k)
    return 0 if not failed and clean_load else 1


if __name__ == "__main__":
    sys.exit(main())

"""apphost.users: accounts, sessions, rate limiting, the first lab admin, and anvil.users on the host."""

from __future__ import annotations

import datetime as dt
import io
import logging

import anvil.users
import pytest
import sqlalchemy as sa

from apphost.testing import FakeWorker, make_runtime
from apphost.users import LoginRateLimiter

PASSWORD = "correct horse battery"


@pytest.fixture
def clock():
    return {"t": 0.0}


@pytest.fixture
def rt(tmp_path, clock):
    limiter = LoginRateLimiter(max_failures=3, window_s=60, clock=lambda: clock["t"])
    runtime = make_runtime(tmp_path, FakeWorker(), limiter=limiter)
    yield runtime
    runtime.close()
    runtime.db.dispose()


@pytest.fixture
def accounts(rt):
    return rt.accounts


def test_accounts_store_argon2_hashes_and_normalised_emails(rt, accounts):
    user = accounts.create_user("  Ann@Lab.ORG ", PASSWORD)
    stored = rt.run(lambda: (user["email"], user["password_hash"], user["role"], user["enabled"]))
    assert stored[0] == "ann@lab.org" and stored[1].startswith("$argon2") and PASSWORD not in stored[1]
    assert stored[2:] == ("researcher", True)
    with pytest.raises(anvil.users.UserExists):
        accounts.create_user("ann@lab.org", PASSWORD)
    with pytest.raises(anvil.users.PasswordNotAcceptable):
        accounts.create_user("bob@lab.org", "short")
    with pytest.raises(anvil.users.PasswordNotAcceptable):
        accounts.create_user("bob@lab.org", "aaaaaaaaaaaaaaaa")
    with pytest.raises(ValueError):
        accounts.create_user("bob@lab.org", PASSWORD, role="owner")
    with pytest.raises(anvil.users.AuthenticationFailed):
        accounts.create_user("not-an-email", PASSWORD)


def test_authenticate(rt, accounts):
    accounts.create_user("ann@lab.org", PASSWORD)
    user = accounts.authenticate("ANN@lab.org", PASSWORD)
    assert rt.run(lambda: user["last_login"]) is not None
    with pytest.raises(anvil.users.AuthenticationFailed, match="Incorrect email address or password") as wrong:
        accounts.authenticate("ann@lab.org", "wrong password")
    with pytest.raises(anvil.users.AuthenticationFailed) as unknown:
        accounts.authenticate("nobody@lab.org", PASSWORD)
    assert str(wrong.value) == str(unknown.value)  # no hint whether the account exists
    assert rt.run(lambda: accounts.find("ann@lab.org")["n_password_failures"]) == 1
    pending = accounts.signup("new@lab.org", PASSWORD)
    with pytest.raises(anvil.users.AccountIsNotEnabled, match="not enabled yet"):
        accounts.authenticate("new@lab.org", PASSWORD)
    rt.run(lambda: pending.update(enabled=True))
    assert accounts.authenticate("new@lab.org", PASSWORD) == pending
    rt.run(lambda: pending.update(enabled=False))  # used, then disabled: said so, not "not yet"
    with pytest.raises(anvil.users.AccountIsNotEnabled, match="has been disabled; ask a lab admin"):
        accounts.authenticate("new@lab.org", PASSWORD)


def test_every_entry_point_ignores_the_case_and_spaces_of_an_email(rt, accounts):
    ann = accounts.create_user(" Ann@Lab.ORG\t", PASSWORD)
    assert accounts.find("ann@lab.org") == ann and accounts.find("  ANN@lab.org ") == ann
    assert accounts.authenticate("\tANN@LAB.org  ", PASSWORD) == ann
    with pytest.raises(anvil.users.UserExists):
        accounts.create_user("ANN@lab.org ", PASSWORD)
    # every spelling counts against the same account, and is blocked with it
    for spelling in ("ANN@lab.org", " ann@lab.org", "Ann@Lab.Org  "):
        with pytest.raises(anvil.users.AuthenticationFailed, match="Incorrect"):
            accounts.authenticate(spelling, "wrong password")
    with pytest.raises(anvil.users.TooManyPasswordFailures):
        accounts.check_rate_limit(" ann@LAB.ORG")
    with pytest.raises(anvil.users.TooManyPasswordFailures):
        accounts.authenticate("ann@lab.org", PASSWORD)
    email, password = accounts.reset_password("  ANN@lab.Org")
    assert email == "ann@lab.org" and rt.run(lambda: accounts.find(email)["password_hash"]).startswith("$argon2")


def test_a_malformed_email_is_refused_before_any_password_check(accounts, monkeypatch):
    """No account can have it, so it costs no argon2 and takes no room in the rate limiter."""
    verified = []
    monkeypatch.setattr(accounts, "_verify", lambda *args: verified.append(args) or False)
    for email in ("ann.lab.org", "ann@lab@org", "ann @lab.org", "a@" + "b" * 300 + ".org", ""):
        with pytest.raises(anvil.users.AuthenticationFailed, match="Enter a valid email address"):
            accounts.authenticate(email, PASSWORD, "10.0.0.1")
        accounts.check_rate_limit(email, "10.0.0.1")
    assert verified == [] and accounts.limiter.keys_tracked() == 0
    with pytest.raises(anvil.users.AuthenticationFailed, match="Email address and password are required"):
        accounts.authenticate(None, PASSWORD)


def test_rate_limit_per_account_and_address(accounts, clock):
    accounts.create_user("ann@lab.org", PASSWORD)
    for _ in range(3):
        with pytest.raises(anvil.users.AuthenticationFailed):
            accounts.authenticate("ann@lab.org", "guess", "10.0.0.1")
    with pytest.raises(anvil.users.TooManyPasswordFailures):
        accounts.authenticate("ann@lab.org", PASSWORD, "10.0.0.2")  # even the right password
    accounts.create_user("bob@lab.org", PASSWORD)
    assert accounts.authenticate("bob@lab.org", PASSWORD, "10.0.0.1") is not None  # others on that address may
    for i in range(accounts.limiter.max_address_failures - 3):  # guessing across accounts from one address
        with pytest.raises(anvil.users.AuthenticationFailed):
            accounts.authenticate(f"user{i}@lab.org", "guess", "10.0.0.1")
    with pytest.raises(anvil.users.TooManyPasswordFailures):
        accounts.authenticate("bob@lab.org", PASSWORD, "10.0.0.1")  # ... stops it for everyone there
    clock["t"] += 61
    assert accounts.authenticate("ann@lab.org", PASSWORD, "10.0.0.1") is not None


def test_refused_attempts_do_not_grow_the_rate_limiter(accounts, clock):
    """A blocked address sending sign-ins for ever new emails costs no argon2: it must cost no memory either."""
    limiter = accounts.limiter
    n = limiter.max_address_failures
    for i in range(n):
        with pytest.raises(anvil.users.AuthenticationFailed):
            accounts.authenticate(f"nobody{i}@lab.org", "guess", "10.0.0.9")
    assert limiter.keys_tracked() == n + 1  # the emails and the address
    for i in range(500):
        with pytest.raises(anvil.users.TooManyPasswordFailures):
            accounts.authenticate(f"spray{i}@lab.org", "guess", "10.0.0.9")
    assert limiter.keys_tracked() == n + 1
    clock["t"] += 61
    limiter.check("addr:10.0.0.9")  # expired entries go when they are next looked at
    assert limiter.keys_tracked() == n


def test_the_rate_limiter_keeps_at_most_max_keys(clock):
    limiter = LoginRateLimiter(max_failures=3, window_s=60, clock=lambda: clock["t"], max_keys=100)
    for i in range(50):
        limiter.failed(f"email:old{i}@lab.org")
    clock["t"] += 61  # those 50 have expired
    for i in range(120):
        limiter.failed(f"email:new{i}@lab.org")
    assert limiter.keys_tracked() == 100  # the expired ones went first, then the oldest of the live ones
    limiter.failed("email:victim@lab.org")
    for i in range(150):  # many addresses: they push out each other, not the account they guess at
        limiter.failed(f"addr:10.1.{i // 256}.{i % 256}")
    assert limiter.keys_tracked() == 100 and "email:victim@lab.org" in limiter._failures
    for _ in range(2):
        limiter.failed("email:new119@lab.org")
    with pytest.raises(anvil.users.TooManyPasswordFailures):
        limiter.check("email:new119@lab.org")


def test_sessions_are_random_hashed_and_expire(rt, accounts):
    user = accounts.create_user("ann@lab.org", PASSWORD)
    session = accounts.create_session(user)
    with rt.db.engine.connect() as conn:
        stored = [r.token_hash for r in conn.execute(sa.text("SELECT token_hash FROM anvil_host_sessions"))]
    assert session.token not in stored and len(session.token) >= 40
    assert accounts.session_user(accounts.session_from_token(session.token)) == user
    assert accounts.session_from_token("forged-token") is None
    accounts.idle_timeout = dt.timedelta(seconds=0)
    assert accounts.session_from_token(session.token) is None  # idle too long
    accounts.idle_timeout = dt.timedelta(hours=1)
    assert accounts.session_from_token(session.token) is None  # and it was deleted
    accounts.session_lifetime = dt.timedelta(seconds=-1)
    assert accounts.session_from_token(accounts.create_session(user).token) is None  # past its lifetime


def test_disabled_accounts_lose_their_sessions(rt, accounts):
    user = accounts.create_user("ann@lab.org", PASSWORD)
    session = accounts.create_session(user)
    rt.run(lambda: user.update(enabled=False))
    assert accounts.session_user(accounts.session_from_token(session.token)) is None


def test_first_admin_from_environment(accounts, caplog):
    out = io.StringIO()
    admin = accounts.ensure_first_admin({"NSCFATE_ADMIN_EMAIL": "boss@lab.org", "NSCFATE_ADMIN_PASSWORD": PASSWORD}, out)
    assert admin is not None and out.getvalue() == ""
    assert not accounts.password_is_temporary(admin)  # the operator chose it
    assert accounts.authenticate("boss@lab.org", PASSWORD) == admin
    assert accounts.ensure_first_admin({}, out) is None  # only once


def test_an_existing_account_becomes_the_first_admin_only_with_its_password(accounts):
    out = io.StringIO()
    squatter = accounts.signup("admin@localhost.localdomain", "a squatter's password")  # sign-up is open
    for env in ({}, {"NSCFATE_ADMIN_PASSWORD": "not that password"}):
        with pytest.raises(anvil.users.AuthenticationFailed, match="exists but is not a lab admin"):
            accounts.ensure_first_admin(env, out)
    assert len(accounts.users.search(role="lab_admin", enabled=True)) == 0
    assert accounts.ensure_first_admin({"NSCFATE_ADMIN_PASSWORD": "a squatter's password"}, out) == squatter
    assert out.getvalue() == ""


def test_first_admin_with_a_printed_one_time_password(accounts, caplog):
    out = io.StringIO()
    with caplog.at_level(logging.DEBUG):
        accounts.ensure_first_admin({}, out)
    printed = out.getvalue()
    password = printed.split("One-time password (shown only now): ")[1].split()[0]
    assert accounts.authenticate("admin@localhost.localdomain", password) is not None
    assert password not in caplog.text  # never in the log


def test_a_password_the_host_made_up_is_temporary_until_the_person_changes_it(accounts):
    out = io.StringIO()
    admin = accounts.ensure_first_admin({}, out)
    made_up = out.getvalue().split("One-time password (shown only now): ")[1].split()[0]
    assert accounts.password_is_temporary(admin)
    with pytest.raises(anvil.users.PasswordNotAcceptable, match="not the current one"):
        accounts.change_password(admin, made_up, made_up)
    assert accounts.password_is_temporary(admin)
    accounts.change_password(admin, made_up, PASSWORD)
    assert not accounts.password_is_temporary(admin)

    ann = accounts.create_user("ann@lab.org", PASSWORD)  # chosen by a lab admin, for her to keep or change
    assert not accounts.password_is_temporary(ann)
    _, reset = accounts.reset_password("ann@lab.org")
    assert accounts.password_is_temporary(ann)
    # Changed some other way (Anvil's own anvil.users.reset_password, an operator's SQL): not temporary
    # either, since the stored hash is no longer the made-up one.
    ann["password_hash"] = accounts.hasher.hash("her own passphrase")
    assert not accounts.password_is_temporary(ann)


# ---- anvil.users inside server calls


def test_anvil_users_api_on_the_host(rt, accounts):
    accounts.create_user("ann@lab.org", PASSWORD)
    session = accounts.create_session(None)

    def sign_in():
        assert anvil.users.get_user() is None
        user = anvil.users.login_with_email("ann@lab.org", PASSWORD)
        assert anvil.users.get_user() == user
        return user["email"]

    assert rt.run(sign_in, session=session) == "ann@lab.org"
    assert rt.run(lambda: anvil.users.get_user()["email"], session=session) == "ann@lab.org"  # remembered
    rt.run(anvil.users.logout, session=session)
    assert rt.run(anvil.users.get_user, session=session) is None
    with pytest.raises(anvil.users.AuthenticationFailed):
        rt.run(anvil.users.login_with_email, "ann@lab.org", "wrong password")


def test_force_login_takes_only_user_rows(rt, accounts):
    user = accounts.create_user("ann@lab.org", PASSWORD)

    def force(row):
        anvil.users.force_login(row)
        return anvil.users.get_user()

    assert rt.run(force, user) == user
    with pytest.raises(TypeError):
        rt.run(lambda: force(rt.db.app_tables.predictions.add_row(filename="x")))


def test_concurrent_requests_do_not_lock_each_other_out_of_sqlite(rt, accounts):
    # Each request checks its session (a read, then a write of last_seen) while others write: on SQLite
    # a read-then-write transaction fails at once with "database is locked" unless the write lock is
    # taken up front.
    user = accounts.create_user("ann@lab.org", PASSWORD)
    tokens = [accounts.create_session(user).token for _ in range(6)]
    errors = []

    def requests(token):
        try:
            for _ in range(40):
                assert accounts.session_from_token(token) is not None
                rt.run(lambda: user.update(n_password_failures=0))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    _in_threads(requests, tokens)
    assert errors == []


def _in_threads(target, items) -> None:
    """``target(item)`` for every item, each on its own thread, all at once; returns when all are done."""
    import threading

    threads = [threading.Thread(target=target, args=(item,)) for item in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_argon2_runs_at_most_hash_slots_at_once(tmp_path):
    # Each argon2 call takes 64 MiB: a burst of sign-ins must queue for the slots, not all hash at once
    # (16 at once took the host to ~1 GB).
    import threading
    import time

    import argon2

    from apphost.runtime import create_runtime
    from apphost.testing import REPO_ROOT

    class CountingHasher(argon2.PasswordHasher):
        def __init__(self):
            super().__init__(time_cost=1, memory_cost=1024, parallelism=1)  # fast; the count is the point
            self.lock, self.running, self.most = threading.Lock(), 0, 0

        def verify(self, stored, password):
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            time.sleep(0.05)  # long enough for every thread to be waiting at once
            try:
                return super().verify(stored, password)
            finally:
                with self.lock:
                    self.running -= 1

    hasher = CountingHasher()
    runtime = create_runtime(REPO_ROOT, db_url=f"sqlite:///{tmp_path / 'app.db'}", media_dir=tmp_path / "media",
                             call=FakeWorker(), accounts_options={"hasher": hasher, "hash_slots": 2}, max_workers=4)
    try:
        emails = [f"user{i}@lab.org" for i in range(8)]
        for email in emails:
            runtime.accounts.create_user(email, PASSWORD)
        signed_in, errors = [], []

        def sign_in(email):
            try:
                signed_in.append(runtime.accounts.authenticate(email, PASSWORD))
            except Exception as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

        _in_threads(sign_in, emails)
    finally:
        runtime.close()
        runtime.db.dispose()
    assert errors == [] and len(signed_in) == 8
    assert hasher.most == 2

"""apphost.users per request: a script's repeated HTTP Basic requests pay argon2 once per few minutes
(VerifiedCredentials), without weakening what a sign-in checks (wrong password, changed password,
disabled account, rate limit); a browser session's idle timer is written at most once a minute."""

from __future__ import annotations

import anvil.users
import pytest

from apphost.testing import FakeWorker, fast_hasher, make_runtime
from apphost.users import LoginRateLimiter, VerifiedCredentials

PASSWORD = "correct horse battery"


class CountingHasher:
    """The real (fast) argon2 hasher, counting verifications."""

    def __init__(self):
        self.inner = fast_hasher()
        self.verifications = 0

    def verify(self, stored, password):
        self.verifications += 1
        return self.inner.verify(stored, password)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture
def clock():
    return {"t": 0.0}


@pytest.fixture
def rt(tmp_path, clock):
    runtime = make_runtime(tmp_path, FakeWorker(), limiter=LoginRateLimiter(max_failures=3, window_s=60,
                                                                            clock=lambda: clock["t"]))
    hasher = CountingHasher()
    runtime.accounts.hasher = hasher
    runtime.accounts.verified = VerifiedCredentials(ttl_s=300, clock=lambda: clock["t"])
    runtime.accounts.create_user("ann@lab.org", PASSWORD)
    yield runtime, hasher
    runtime.close()
    runtime.db.dispose()


def test_a_repeated_sign_in_skips_argon2_and_the_write(rt):
    runtime, hasher = rt
    accounts = runtime.accounts
    first = accounts.authenticate("ann@lab.org", PASSWORD)
    login_time = runtime.run(lambda: first["last_login"])
    again = accounts.authenticate(" ANN@lab.org", PASSWORD)  # same account, spelt differently
    assert hasher.verifications == 1
    assert runtime.run(lambda: (again.get_id(), again["last_login"])) == (first.get_id(), login_time)


def test_wrong_passwords_are_always_verified_and_rate_limited(rt):
    runtime, hasher = rt
    accounts = runtime.accounts
    accounts.authenticate("ann@lab.org", PASSWORD)
    for _ in range(3):
        with pytest.raises(anvil.users.AuthenticationFailed, match="Incorrect"):
            accounts.authenticate("ann@lab.org", PASSWORD + "x")
    assert hasher.verifications == 4
    with pytest.raises(anvil.users.TooManyPasswordFailures):  # the lock-out applies to remembered ones too
        accounts.authenticate("ann@lab.org", PASSWORD)


def test_a_changed_password_or_a_disabled_account_takes_effect_at_once(rt):
    runtime, hasher = rt
    accounts = runtime.accounts
    user = accounts.authenticate("ann@lab.org", PASSWORD)
    accounts.change_password(user, PASSWORD, "new battery staple horse")
    with pytest.raises(anvil.users.AuthenticationFailed, match="Incorrect"):
        accounts.authenticate("ann@lab.org", PASSWORD)
    accounts.authenticate("ann@lab.org", "new battery staple horse")
    runtime.run(lambda: accounts.find("ann@lab.org").update(enabled=False))
    with pytest.raises(anvil.users.AccountIsNotEnabled):
        accounts.authenticate("ann@lab.org", "new battery staple horse")


def test_remembered_for_ttl_only(rt, clock):
    runtime, hasher = rt
    accounts = runtime.accounts
    accounts.authenticate("ann@lab.org", PASSWORD)
    clock["t"] += 299
    accounts.authenticate("ann@lab.org", PASSWORD)
    assert hasher.verifications == 1
    clock["t"] += 2
    accounts.authenticate("ann@lab.org", PASSWORD)
    assert hasher.verifications == 2


def test_the_cache_holds_no_password_and_is_bounded():
    cache = VerifiedCredentials(max_entries=2)
    for i in range(3):
        cache.add(f"u{i}@lab.org", PASSWORD, f"hash{i}")
    assert not cache.hit("u0@lab.org", PASSWORD, "hash0")  # the oldest was dropped
    assert cache.hit("u2@lab.org", PASSWORD, "hash2")
    assert not cache.hit("u2@lab.org", PASSWORD, "another hash")
    assert not any(PASSWORD.encode() in key or "u2" in str(key) for key in cache._entries)


def test_a_session_is_refreshed_at_most_once_a_minute(rt):
    import datetime as dt

    import sqlalchemy as sa

    runtime, _ = rt
    accounts = runtime.accounts
    session = accounts.create_session(accounts.authenticate("ann@lab.org", PASSWORD))

    def last_seen():
        with runtime.db.engine.connect() as conn:
            return conn.execute(sa.select(accounts.sessions.c.last_seen)).scalar_one()

    def set_last_seen(value):
        with runtime.db.engine.begin() as conn:
            conn.execute(sa.update(accounts.sessions).values(last_seen=value))

    created = last_seen()
    assert accounts.session_from_token(session.token) is not None
    assert last_seen() == created  # a request right after: no write
    two_minutes_ago = created - dt.timedelta(minutes=2)
    set_last_seen(two_minutes_ago)
    assert accounts.session_from_token(session.token) is not None
    assert last_seen() > two_minutes_ago  # older than the resolution: refreshed
    set_last_seen(created - accounts.idle_timeout)  # idle too long: still refused and deleted
    assert accounts.session_from_token(session.token) is None
    with runtime.db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(accounts.sessions)).scalar_one() == 0

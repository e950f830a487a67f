"""Accounts, sessions and roles for the local host: the platform side of ``anvil.users``.

Accounts are rows of the Users table named in ``anvil.yaml`` (``server_config.user_table``), with
argon2 password hashes. Sessions are server-side: a random token goes to the browser in an HttpOnly,
SameSite cookie, and only its SHA-256 is stored (table ``anvil_host_sessions``), with an idle and an
absolute expiry (the idle timer is written at most once a minute, not on every request). Failed
sign-ins are rate limited per account and per client address.

Scripts send HTTP Basic credentials with every request, and one argon2 verification costs ~0.1-0.5 s
of CPU and 64 MiB. A successful check is remembered for a few minutes (:class:`VerifiedCredentials`:
keyed by an HMAC under a per-process random key, tied to the stored hash, so a changed password or a
disabled account takes effect at once). Failures are never remembered. At most one argon2 hash or
verification per CPU core runs at a time: 16 clients signing in at once took the host to ~1 GB without
the bound and ~140 MB with it, all done in the same time (the work is CPU-bound) and the median one
sooner.

``apphost.runtime`` routes ``anvil.users.get_user()``, ``login_with_email``, ``logout``,
``force_login`` and ``signup_with_email`` here, so server modules keep using Anvil's API.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import os
import re
import secrets
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import argon2
import sqlalchemy as sa
from anvil.users import (
    AccountIsNotEnabled,
    AuthenticationFailed,
    PasswordNotAcceptable,
    TooManyPasswordFailures,
    UserExists,
)

from apphost.tables import Database, Row

log = logging.getLogger(__name__)

ROLES = ("researcher", "lab_admin")
MIN_PASSWORD_LENGTH = 10
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")
_SESSIONS = "anvil_host_sessions"
_TEMPORARY_PASSWORDS = "anvil_host_temporary_passwords"


def normalise_email(email: Any) -> str:
    """An email address as accounts store and compare it: without surrounding spaces, in lower case.
    AuthenticationFailed if it is not one (no account can have it).

    :class:`Accounts`' public methods take an email as typed and call this once; what they hand on
    (lookups, rate-limiter keys, the verified-credentials cache) is normalised already."""
    if isinstance(email, str):
        email = email.strip().lower()
        if len(email) <= 254 and _EMAIL_RE.match(email):
            return email
    raise AuthenticationFailed("Enter a valid email address, like name@lab.org")


def check_password_policy(password: Any) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordNotAcceptable(f"Passwords must be at least {MIN_PASSWORD_LENGTH} characters long")
    if len(password) > 1024:
        raise PasswordNotAcceptable("Passwords must be at most 1024 characters long")
    if len(set(password)) < 4:
        raise PasswordNotAcceptable("This password is too easy to guess; use more different characters")


@dataclass
class Session:
    """A browser session. ``token`` is only known for sessions created in this process call."""

    token_hash: str
    user_pk: int | None
    csrf_token: str
    expires: dt.datetime
    token: str | None = None


class LoginRateLimiter:
    """At most ``max_failures`` failed sign-ins per account, and ``max_address_failures`` (default 10x
    as many) per address, in ``window_s`` seconds. An address gets more because a lab's users often
    share one (a proxy, a NAT, everyone on the host machine itself): one person's typos must not lock
    the whole lab out, while guessing across many accounts from one address is still stopped.

    Only failures make entries, and an entry goes once its failures are older than the window, so refused
    attempts (no argon2, cheap to send) cannot grow it; at most ``max_keys`` keys are kept (oldest first out).
    """

    def __init__(self, max_failures: int = 5, window_s: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000, max_address_failures: int | None = None):
        self.max_failures = max_failures
        self.max_address_failures = max_address_failures or 10 * max_failures
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        """``key``'s failures within the window (None, and the entry dropped, when there are none)."""
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and now - failures[0] > self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures

    def check(self, *keys: str) -> None:
        with self._lock:
            now = self._clock()
            for key in keys:
                failures = self._recent(key, now)
                limit = self.max_address_failures if key.startswith("addr:") else self.max_failures
                if failures is not None and len(failures) >= limit:
                    wait = int(self.window_s - (now - failures[-limit])) + 1
                    error = TooManyPasswordFailures(f"Too many failed sign-in attempts. Try again in {wait} seconds.")
                    error.retry_after_s = wait
                    raise error

    def failed(self, *keys: str) -> None:
        with self._lock:
            now = self._clock()
            for key in keys:
                failures = self._recent(key, now)
                if failures is None:
                    failures = self._failures[key] = deque()
                failures.append(now)
            if len(self._failures) > self.max_keys:
                for key in list(self._failures):
                    self._recent(key, now)  # drops the expired entries
                excess = len(self._failures) - self.max_keys
                # still too many: addresses go first (oldest first), so that many addresses cannot
                # push out the account they are guessing at; then the oldest accounts
                order = sorted(self._failures, key=lambda k: not k.startswith("addr:"))
                for key in order[:max(0, excess)]:
                    del self._failures[key]

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def keys_tracked(self) -> int:
        return len(self._failures)


class VerifiedCredentials:
    """Recently verified (email, password) pairs, so repeated HTTP Basic requests skip argon2.

    An entry is ``HMAC-SHA256(per-process random key, email + password)`` -> (the stored password hash it
    was checked against, expiry): neither the password nor anything that could be tested against it
    offline without the in-memory key. :meth:`hit` only answers for the same stored hash, so a changed
    password no longer matches. At most ``max_entries`` entries (oldest dropped), each ``ttl_s`` seconds.
    """

    def __init__(self, ttl_s: float = 300.0, max_entries: int = 1024, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _digest(self, email: str, password: str) -> bytes:
        return hmac.new(self._key, f"{email}\0{password}".encode("utf-8"), hashlib.sha256).digest()

    def hit(self, email: str, password: str, stored_hash: str) -> bool:
        """Whether this pair was verified against ``stored_hash`` less than ``ttl_s`` seconds ago."""
        digest = self._digest(email, password)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return False
            if entry[1] <= self._clock():
                del self._entries[digest]
                return False
            return hmac.compare_digest(entry[0], stored_hash)

    def add(self, email: str, password: str, stored_hash: str) -> None:
        """Remember a successful verification against ``stored_hash``."""
        digest = self._digest(email, password)
        with self._lock:
            self._entries[digest] = (stored_hash, self._clock() + self.ttl_s)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


class Accounts:
    """User accounts and sessions on top of the app's Data Tables."""

    def __init__(
        self,
        db: Database,
        *,
        user_table: str = "users",
        allow_signup: bool = False,
        session_days: float = 7.0,
        idle_hours: float = 12.0,
        hasher: argon2.PasswordHasher | None = None,
        limiter: LoginRateLimiter | None = None,
        verified: VerifiedCredentials | None = None,
        hash_slots: int | None = None,
    ):
        self.db = db
        self.users = db.app_tables[user_table]
        for col in ("email", "enabled", "password_hash", "role"):
            self.users.spec.column(col)  # fail at start-up, not at first sign-in
        self.allow_signup = allow_signup
        self.session_lifetime = dt.timedelta(days=session_days)
        self.idle_timeout = dt.timedelta(hours=idle_hours)
        #: A session's idle timer (``last_seen``) is written at most this often.
        self.last_seen_resolution = dt.timedelta(minutes=1)
        self.hasher = hasher or argon2.PasswordHasher()
        self.limiter = limiter or LoginRateLimiter()
        self.verified = verified or VerifiedCredentials()
        #: Argon2 runs one at a time per core: each takes 64 MiB, and more at once finish no sooner.
        self._hash_slots = threading.BoundedSemaphore(hash_slots or os.cpu_count() or 1)
        self._dummy_hash = self._hash(secrets.token_urlsafe(16))
        self.sessions = sa.Table(
            _SESSIONS, db.metadata,
            sa.Column("token_hash", sa.String(64), primary_key=True),
            sa.Column("user_pk", sa.Integer, index=True),
            sa.Column("csrf_token", sa.String(64), nullable=False),
            sa.Column("created", sa.DateTime, nullable=False),
            sa.Column("last_seen", sa.DateTime, nullable=False),
            sa.Column("expires", sa.DateTime, nullable=False),
            extend_existing=True,
        )
        # Passwords the host made up (the first lab admin's, --reset-password's): the account's hash
        # when it was set, so any change of password, by whatever route, ends "temporary".
        self.temporary_passwords = sa.Table(
            _TEMPORARY_PASSWORDS, db.metadata,
            sa.Column("user_pk", sa.Integer, primary_key=True),
            sa.Column("password_hash", sa.Text, nullable=False),
            extend_existing=True,
        )

    def create_tables(self) -> None:
        self.sessions.create(self.db.engine, checkfirst=True)
        self.temporary_passwords.create(self.db.engine, checkfirst=True)

    # ---- accounts

    def find(self, email: str) -> Row | None:
        return self.users.get(email=normalise_email(email))

    def user_by_pk(self, pk: int) -> Row | None:
        return self.users.get_by_id(Row(self.users, pk, None).get_id())

    def create_user(self, email: str, password: str, *, role: str = "researcher", enabled: bool = True) -> Row:
        """Create an account. Raises UserExists, PasswordNotAcceptable or ValueError (bad role)."""
        return self._add_user(normalise_email(email), password, role=role, enabled=enabled)

    def _add_user(self, email: str, password: str, *, role: str, enabled: bool) -> Row:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        check_password_policy(password)
        if self.users.get(email=email) is not None:
            raise UserExists("An account with this email address already exists")
        return self.users.add_row(
            email=email, enabled=enabled, role=role, password_hash=self._hash(password),
            signed_up=_now(), n_password_failures=0, confirmed_email=False,
        )

    def signup(self, email: str, password: str) -> Row:
        """Controlled sign-up: the account is created disabled until a lab admin enables it."""
        if not self.allow_signup:
            raise AuthenticationFailed("Sign-up is closed; ask a lab admin for an account")
        return self.create_user(email, password, role="researcher", enabled=False)

    @staticmethod
    def _limit_keys(email: str, remote_addr: str | None) -> list[str]:
        """The rate limiter's keys of a sign-in (``email`` normalised): the account, and the address."""
        return [f"email:{email}"] + ([f"addr:{remote_addr}"] if remote_addr else [])

    def check_rate_limit(self, email: Any, remote_addr: str | None = None) -> None:
        """TooManyPasswordFailures if sign-ins as ``email`` from ``remote_addr`` are blocked right now."""
        try:
            email = normalise_email(email)
        except AuthenticationFailed:
            return  # authenticate refuses it before any password check
        self.limiter.check(*self._limit_keys(email, remote_addr))

    def authenticate(self, email: Any, password: Any, remote_addr: str | None = None) -> Row:
        """The account for these credentials, or AuthenticationFailed (or a subclass) saying why. A
        malformed email is refused at once: no account has it, so it costs no argon2 and no limiter entry."""
        if not isinstance(email, str) or not isinstance(password, str):
            raise AuthenticationFailed("Email address and password are required")
        email = normalise_email(email)
        keys = self._limit_keys(email, remote_addr)
        key_email = keys[0]
        self.limiter.check(*keys)
        user = self.users.get(email=email)
        stored = user["password_hash"] if user is not None else None
        if stored is not None and self.verified.hit(email, password, stored):
            # Verified against this very hash a moment ago (a script's next request): no argon2 and no
            # write; last_login was set then.
            if not user["enabled"]:
                raise _not_enabled(user)
            return user
        if not self._verify(stored or self._dummy_hash, password) or stored is None:
            self.limiter.failed(*keys)
            if user is not None:
                user["n_password_failures"] = (user["n_password_failures"] or 0) + 1
            raise AuthenticationFailed("Incorrect email address or password")
        if not user["enabled"]:
            raise _not_enabled(user)
        self.limiter.succeeded(key_email)
        updates: dict[str, Any] = {"last_login": _now(), "n_password_failures": 0}
        if self.hasher.check_needs_rehash(stored):
            updates["password_hash"] = self._hash(password)
        user.update(**updates)
        self.verified.add(email, password, updates.get("password_hash", stored))
        return user

    def _hash(self, password: str) -> str:
        with self._hash_slots:
            return self.hasher.hash(password)

    def _verify(self, stored: str, password: str) -> bool:
        try:
            with self._hash_slots:
                return self.hasher.verify(stored, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    def change_password(self, user: Row, old_password: str, new_password: str) -> None:
        if not self._verify(user["password_hash"] or self._dummy_hash, old_password or ""):
            raise AuthenticationFailed("The current password is not correct")
        check_password_policy(new_password)
        if hmac.compare_digest(new_password.encode(), old_password.encode()):
            raise PasswordNotAcceptable("Choose a new password, not the current one")
        user["password_hash"] = self._hash(new_password)
        self.end_sessions_of(user)
        with self.db.engine.begin() as conn:
            conn.execute(sa.delete(self.temporary_passwords).where(self.temporary_passwords.c.user_pk == user._pk))

    def _mark_password_temporary(self, user: Row) -> None:
        """The account's current password was made up by the host: it is asked to choose its own."""
        self.temporary_passwords.create(self.db.engine, checkfirst=True)  # a database an older host made
        with self.db.engine.begin() as conn:
            conn.execute(sa.delete(self.temporary_passwords).where(self.temporary_passwords.c.user_pk == user._pk))
            conn.execute(sa.insert(self.temporary_passwords).values(user_pk=user._pk,
                                                                   password_hash=user["password_hash"]))

    def password_is_temporary(self, user: Row) -> bool:
        """Whether the account still has a password the host made up (it has not chosen its own)."""
        with self.db.engine.connect() as conn:
            stored = conn.execute(sa.select(self.temporary_passwords.c.password_hash)
                                  .where(self.temporary_passwords.c.user_pk == user._pk)).scalar()
        if stored is None:
            return False
        current = self.user_by_pk(user._pk)  # ``user`` may hold the hash it was read with
        return current is not None and hmac.compare_digest(stored, current["password_hash"] or "")

    def reset_password(self, email: str) -> tuple[str, str]:
        """Give the account ``email`` a new random password and end its sessions (for an operator whose
        password is lost: ``python -m apphost --reset-password EMAIL``). Returns its email (normalised)
        and the password."""
        email = normalise_email(email)
        user = self.users.get(email=email)
        if user is None:
            raise AuthenticationFailed(f"no account {email}")
        password = secrets.token_urlsafe(15)
        user.update(password_hash=self._hash(password), n_password_failures=0)
        self.end_sessions_of(user)
        self._mark_password_temporary(user)
        log.info("password of %s reset from the command line", email)
        return email, password

    def ensure_first_admin(self, env: Mapping[str, str], out: TextIO = sys.stderr) -> Row | None:
        """Create the first lab admin if there is none.

        The account comes from ``NSCFATE_ADMIN_EMAIL`` / ``NSCFATE_ADMIN_PASSWORD``; without a password a
        random one is generated and written once to ``out`` (the operator's console, never the log).
        """
        if len(self.users.search(role="lab_admin", enabled=True)) > 0:
            return None
        email = normalise_email(env.get("NSCFATE_ADMIN_EMAIL") or "admin@localhost.localdomain")
        password = env.get("NSCFATE_ADMIN_PASSWORD")
        existing = self.users.get(email=email)
        if existing is not None:
            # Sign-up may be open, so anyone could have registered this address: only the one who knows
            # the account's password (given by the operator) makes it the lab admin.
            if password is None or not self._verify(existing["password_hash"] or self._dummy_hash, password):
                raise AuthenticationFailed(
                    f"an account {email} exists but is not a lab admin; set NSCFATE_ADMIN_PASSWORD to its "
                    "password to make it the lab admin, or NSCFATE_ADMIN_EMAIL to a new address")
            existing.update(role="lab_admin", enabled=True)
            log.info("made existing account %s the lab admin", email)
            return existing
        generated = password is None
        if generated:
            password = secrets.token_urlsafe(15)
        user = self._add_user(email, password, role="lab_admin", enabled=True)
        log.info("created the first lab admin account %s", email)
        if generated:
            self._mark_password_temporary(user)
            out.write(
                f"\nNSC Fate: created lab admin account {email}\n"
                f"One-time password (shown only now): {password}\n"
                "Sign in and change it (Account > Change password, or POST /_/auth/password).\n\n")
            out.flush()
        return user

    # ---- sessions

    def create_session(self, user: Row | None) -> Session:
        token = secrets.token_urlsafe(32)
        now = _now_naive()
        session = Session(_hash_token(token), user._pk if user is not None else None,
                          secrets.token_urlsafe(24), now + self.session_lifetime, token)
        with self.db.engine.begin() as conn:
            conn.execute(sa.insert(self.sessions).values(
                token_hash=session.token_hash, user_pk=session.user_pk, csrf_token=session.csrf_token,
                created=now, last_seen=now, expires=session.expires))
        return session

    def session_from_token(self, token: str | None) -> Session | None:
        """The live session for a cookie token (refreshing its idle timer), or None."""
        if not token or len(token) > 200:
            return None
        token_hash = _hash_token(token)
        now = _now_naive()
        with self.db.engine.connect() as conn:
            rec = conn.execute(sa.select(self.sessions).where(self.sessions.c.token_hash == token_hash)).first()
        if rec is None:
            return None
        expired = rec.expires <= now or rec.last_seen + self.idle_timeout <= now
        if not expired and now - rec.last_seen < self.last_seen_resolution:
            # Refreshed a moment ago: no write (each one is a commit, an fsync on SQLite, per request).
            return Session(token_hash, rec.user_pk, rec.csrf_token, rec.expires, token)
        # Writes in their own transactions (write lock taken up front on SQLite): a read-then-write
        # transaction fails at once on SQLite when another request wrote in between.
        with self.db.begin(write=True) as conn:
            if expired:
                conn.execute(sa.delete(self.sessions).where(self.sessions.c.token_hash == token_hash))
                return None
            conn.execute(sa.update(self.sessions).where(self.sessions.c.token_hash == token_hash)
                         .values(last_seen=now))
        return Session(token_hash, rec.user_pk, rec.csrf_token, rec.expires, token)

    def set_session_user(self, session: Session, user: Row | None) -> None:
        session.user_pk = user._pk if user is not None else None
        with self.db.engine.begin() as conn:
            conn.execute(sa.update(self.sessions).where(self.sessions.c.token_hash == session.token_hash)
                         .values(user_pk=session.user_pk))

    def end_session(self, session: Session) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(sa.delete(self.sessions).where(self.sessions.c.token_hash == session.token_hash))

    def end_sessions_of(self, user: Row) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(sa.delete(self.sessions).where(self.sessions.c.user_pk == user._pk))

    def session_user(self, session: Session | None) -> Row | None:
        """The enabled account signed in to this session, if any."""
        if session is None or session.user_pk is None:
            return None
        user = self.user_by_pk(session.user_pk)
        if user is None or not user["enabled"]:
            return None
        return user


def role_of(user: Row | None) -> str | None:
    return None if user is None else (user["role"] or "researcher")


def _not_enabled(user: Row) -> AccountIsNotEnabled:
    """Why a correct password does not sign in: a new account awaits approval, a used one was disabled
    (said only once the password matched, like every other reason)."""
    if user["last_login"] is None:
        return AccountIsNotEnabled("This account is not enabled yet; a lab admin has to enable it")
    return AccountIsNotEnabled("This account has been disabled; ask a lab admin to enable it again")


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _now_naive() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)

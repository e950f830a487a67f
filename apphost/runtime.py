"""Runs the app's ``server_code/`` unchanged on the local host.

Server modules import Anvil's public API (``anvil.server``, ``anvil.tables``, ``anvil.users``) from the
real anvil-uplink package. The host provides the platform behind those names:

- ``anvil.tables.app_tables`` resolves to the SQL tables of the runtime running the current call;
- ``anvil.server.call`` is routed: host-provided functions, then this app's own server functions,
  then the injected ``call`` function (the uplink hub: the worker's callables). anvil-uplink's own
  private calls (``anvil.private.users.*`` behind ``anvil.users``, ``anvil.private.tables.*`` behind
  ``anvil.tables.Transaction``) are answered here;
- calls from threads that are not running a server call (e.g. an in-process uplink client) go to
  anvil-uplink's original ``anvil.server.call`` untouched.

Each server call runs in a thread pool with a per-call context (the runtime, the session and signed-in
user, the client address); ``@anvil.server.http_endpoint`` functions are called through the wrapper
anvil-uplink registers, exactly as Anvil calls them.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import re
import sys
import threading
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anvil
import anvil._server
import anvil.server
import anvil.tables
import anvil.users
import yaml

from apphost.tables import Database, Row, TableError
from apphost.users import Accounts, Session

log = logging.getLogger(__name__)

CallFunction = Callable[..., Any]


@dataclass
class CallContext:
    """What a server call knows about its caller."""

    runtime: AppRuntime
    session: Session | None = None
    user: Row | None = None
    remote_addr: str | None = None
    #: A platform failure (e.g. the database) inside anvil.users during this call; anvil-uplink's
    #: http_endpoint wrapper answers any failure to authenticate with 401, so the host looks here.
    platform_error: BaseException | None = None


_local = threading.local()


def current_context() -> CallContext | None:
    """The context of the server call running in this thread, or None."""
    return getattr(_local, "ctx", None)


# --------------------------------------------------------------------------------------------------
# Process-wide installation behind anvil-uplink's public names (idempotent)

_install_lock = threading.Lock()
_original_call: CallFunction | None = None


class _HostAppTables:
    """``anvil.tables.app_tables`` on the host: the tables of the runtime running this call."""

    def _tables(self) -> Any:
        ctx = current_context()
        if ctx is None:
            raise RuntimeError("app_tables is only available inside a server call on the local host")
        return ctx.runtime.db.app_tables

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._tables(), name)

    def __iter__(self) -> Any:
        return iter(self._tables())

    def __repr__(self) -> str:
        return "<anvil.tables.app_tables (local host)>"


def _host_call(fn_name: str, *args: Any, **kwargs: Any) -> Any:
    ctx = current_context()
    if ctx is None:
        assert _original_call is not None
        return _original_call(fn_name, *args, **kwargs)
    if not isinstance(fn_name, str):
        raise TypeError("first argument to anvil.server.call() must be a str")
    return ctx.runtime.dispatch(ctx, fn_name, args, kwargs)


def install_platform() -> None:
    """Put the host's implementations behind ``anvil.server.call`` and ``anvil.tables.app_tables``."""
    global _original_call
    with _install_lock:
        if _original_call is not None:
            return
        _original_call = anvil.server.call
        anvil.server.call = _host_call
        # Modules that did ``from anvil.tables import app_tables`` before this ran hold anvil-uplink's
        # lazy object; switch its class (anvil.tables swaps it the same way) so they get the host's too.
        _use_host_app_tables()
        anvil.server._on_invalidate_client_objects(_use_host_app_tables)


def _use_host_app_tables() -> None:
    object.__dict__["__class__"].__set__(anvil.tables.app_tables, _HostAppTables)


# --------------------------------------------------------------------------------------------------
# Loading server_code


@dataclass(frozen=True)
class Endpoint:
    """One ``@anvil.server.http_endpoint``: ``pattern`` is matched against the path under ``/_/api``.
    ``needs_credentials``: declared with ``authenticate_users``/``authenticate_user``/``require_credentials``,
    so a caller with neither a signed-in session nor credentials is answered 401 by the wrapper anyway."""

    pattern: str
    fn: CallFunction
    needs_credentials: bool = False

    @classmethod
    def of(cls, pattern: str, fn: CallFunction) -> "Endpoint":
        # anvil-uplink keeps the decorator's arguments only in the wrapper's closure.
        flags = inspect.getclosurevars(fn).nonlocals
        needs = any(flags.get(name) for name in ("authenticate_users", "authenticate_user", "require_credentials"))
        return cls(pattern, fn, needs)


def load_app_config(app_dir: Path) -> dict[str, Any]:
    with open(app_dir / "anvil.yaml", encoding="utf-8") as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict) or not isinstance(config.get("package_name"), str):
        raise ValueError(f"{app_dir / 'anvil.yaml'} needs a package_name")
    return config


def service_config(app_config: dict[str, Any], source: str) -> dict[str, Any] | None:
    """``{"client_config", "server_config"}`` of a service in anvil.yaml, or None if not added."""
    for svc in app_config.get("services") or []:
        if svc.get("source") == source:
            return {"client_config": svc.get("client_config") or {}, "server_config": svc.get("server_config") or {}}
    return None


def import_server_modules(app_dir: Path, package_name: str) -> list[types.ModuleType]:
    """Import every server module as ``<package_name>.<module>``, the way Anvil lays the app out
    (the package's ``__path__`` is ``[server_code, client_code]``)."""
    server_dir = (app_dir / "server_code").resolve()
    pkg = sys.modules.get(package_name)
    paths = [str(server_dir), str((app_dir / "client_code").resolve())]
    if pkg is None:
        pkg = types.ModuleType(package_name)
        pkg.__path__ = paths  # type: ignore[attr-defined]
        pkg.__package__ = package_name
        sys.modules[package_name] = pkg
    elif list(getattr(pkg, "__path__", [])) != paths:
        raise RuntimeError(f"a different app is already loaded as package {package_name!r}")
    modules = []
    for entry in sorted(server_dir.iterdir()):
        if entry.suffix == ".py" and entry.stem != "__init__":
            name = entry.stem
        elif entry.is_dir() and (entry / "__init__.py").exists():
            name = entry.name
        else:
            continue
        modules.append(importlib.import_module(f"{package_name}.{name}"))
    return modules


def _registrations_of(package_name: str) -> dict[str, CallFunction]:
    prefix = package_name + "."
    return {
        name: fn for name, fn in anvil._server.registrations.items()
        if getattr(fn, "__module__", "").startswith(prefix)
    }


# --------------------------------------------------------------------------------------------------
# The runtime


class AppRuntime:
    """One app's server modules, tables and accounts, plus the function that reaches the workers.

    ``call`` is ``call(name, *args, **kwargs)`` for functions not defined in ``server_code`` (in the
    assembled host: the uplink hub's ``call_sync``). ``host_functions`` are extra functions server code
    may reach with ``anvil.server.call`` (e.g. the host's worker status for the health endpoint).
    """

    def __init__(
        self,
        app_dir: str | Path,
        db: Database,
        accounts: Accounts,
        call: CallFunction,
        *,
        host_functions: dict[str, CallFunction] | None = None,
        max_workers: int = 8,
    ):
        self.app_dir = Path(app_dir).resolve()
        self.config = load_app_config(self.app_dir)
        self.package_name: str = self.config["package_name"]
        self.db = db
        self.accounts = accounts
        self._forward = call
        self.host_functions = dict(host_functions or {})
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="server-call")
        users = service_config(self.config, "/runtime/services/anvil/users.yml")
        self._client_configs = {
            "/runtime/services/anvil/users.yml": (users or {}).get("client_config", {}),
            # The host implements app_tables itself, not the Accelerated Tables wire protocol.
            "/runtime/services/tables.yml": {},
        }
        install_platform()
        with self._context(CallContext(self)):
            import_server_modules(self.app_dir, self.package_name)
        regs = _registrations_of(self.package_name)
        self.callables = {n: fn for n, fn in regs.items() if ":" not in n}
        self.endpoints = [Endpoint.of(n[len("http:"):], fn) for n, fn in regs.items() if n.startswith("http:")]
        log.info("loaded %d server functions and %d HTTP endpoints from %s",
                 len(self.callables), len(self.endpoints), self.app_dir / "server_code")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # ---- contexts

    @contextmanager
    def _context(self, ctx: CallContext) -> Iterator[CallContext]:
        """Make ``ctx`` this thread's call context; roll back a transaction the call left open."""
        prev = current_context()
        _local.ctx = ctx
        try:
            yield ctx
        finally:
            try:
                if self.db.rollback_dangling():
                    log.warning("a server call ended with a transaction still open; it was rolled back")
            finally:
                _local.ctx = prev

    def new_context(self, session: Session | None = None, remote_addr: str | None = None) -> CallContext:
        return CallContext(self, session, self.accounts.session_user(session), remote_addr)

    # ---- calling server functions

    def call(self, name: str, *args: Any, session: Session | None = None, remote_addr: str | None = None,
             **kwargs: Any) -> Any:
        """Call a server function in this thread, as a caller with ``session`` would."""
        with self._context(self.new_context(session, remote_addr)) as ctx:
            return self.dispatch(ctx, name, args, kwargs)

    def run(self, fn: CallFunction, *args: Any, session: Session | None = None, remote_addr: str | None = None,
            **kwargs: Any) -> Any:
        """Run any function in this thread inside a server-call context (for tests and host tasks)."""
        with self._context(self.new_context(session, remote_addr)):
            return fn(*args, **kwargs)

    async def call_async(self, name: str, *args: Any, session: Session | None = None,
                         remote_addr: str | None = None, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, lambda: self.call(name, *args, session=session, remote_addr=remote_addr, **kwargs))

    def dispatch(self, ctx: CallContext, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if name.startswith("anvil.private."):
            return self._private(ctx, name, args, kwargs)
        if name in self.host_functions:
            return self.host_functions[name](*args, **kwargs)
        fn = self.callables.get(name)
        if fn is not None:
            return fn(*args, **kwargs)
        return self._forward(name, *args, **kwargs)

    # ---- HTTP endpoints

    def find_endpoint(self, path: str) -> Endpoint | None:
        for ep in self.endpoints:
            if re.fullmatch(ep.pattern, path):
                return ep
        return None

    def handle_http(self, endpoint: Endpoint, *, method: str, path: str, query_params: dict[str, Any],
                    form_params: dict[str, Any], origin: str, headers: dict[str, str], remote_address: str | None,
                    body: anvil.Media | None, username: str | None, password: str | None,
                    session: Session | None) -> dict[str, Any]:
        """Call an endpoint's anvil-uplink wrapper in this thread; returns ``{status, body, headers}``.

        A platform failure while authenticating (the database is down) is raised, not answered as 401.
        """
        with self._context(self.new_context(session, remote_address)) as ctx:
            request = anvil._server.api_request
            request.__dict__.clear()  # per-thread object: forget the previous call's request
            request._prevent_access = True
            try:
                result = endpoint.fn(method, path, query_params, form_params, origin, headers,
                                     remote_address, body, username, password)
            finally:
                request.__dict__.clear()
                request._prevent_access = True
            if ctx.platform_error is not None and result.get("status") == 401:
                raise ctx.platform_error
            return result

    async def handle_http_async(self, endpoint: Endpoint, **kwargs: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: self.handle_http(endpoint, **kwargs))

    # ---- the platform's private functions behind anvil.users / anvil.tables

    def _private(self, ctx: CallContext, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        handlers: dict[str, Callable[..., Any]] = {
            "anvil.private.echo": lambda value: value,
            "anvil.private.get_client_config": lambda path: self._client_configs.get(path, {}),
            "anvil.private.tables.open_transaction": lambda isolation=None: self.db.open_transaction(isolation),
            "anvil.private.tables.close_transaction": lambda abort: self.db.close_transaction(bool(abort)),
            "anvil.private.users.get_current_user": lambda allow_remembered=True, fetch=None: self._current_user(ctx),
            "anvil.private.users.login_with_email": lambda email, password, remember=False, mfa=None, fetch=None:
                self._login(ctx, self.accounts.authenticate(email, password, ctx.remote_addr)),
            "anvil.private.users.force_login": lambda user, remember=False, fetch=None: self._login(ctx, user),
            "anvil.private.users.logout": lambda invalidate_client_objects=False: self._login(ctx, None),
            "anvil.private.users.signup_with_email": lambda email, password, remember=False, fetch=None:
                self.accounts.signup(email, password),
            "anvil.private.users.reset_password": lambda old_password, new_password:
                self.accounts.change_password(self._require_user(ctx), old_password, new_password),
        }
        handler = handlers.get(name)
        if handler is None:
            raise anvil.server.NoServerFunctionError(f'The local host does not provide "{name}"')
        try:
            return handler(*args, **kwargs)
        except anvil.users.AuthenticationFailed:
            raise
        except Exception as e:
            ctx.platform_error = e
            raise

    def _current_user(self, ctx: CallContext) -> Row | None:
        user = ctx.user
        if user is None:
            return None
        try:
            return user if user["enabled"] else None
        except TableError:  # the account was deleted during the call
            return None

    def _require_user(self, ctx: CallContext) -> Row:
        user = self._current_user(ctx)
        if user is None:
            raise anvil.users.AuthenticationFailed("You must be signed in")
        return user

    def _login(self, ctx: CallContext, user: Row | None) -> Row | None:
        if user is not None and (not isinstance(user, Row) or user._table is not self.accounts.users):
            raise TypeError("force_login() takes a row from the users table")
        ctx.user = user
        if ctx.session is not None:
            self.accounts.set_session_user(ctx.session, user)
        return user


#: Indexes for the searches server_code makes of the history (server_code/predictions.py: the History
#: page's filters, listed newest first, and the experiment summary). Hosted Anvil indexes every column for
#: equality; here each filter gets an index with the time it is listed by, so that a page or a count reads
#: only the matching rows and sorts none. Only short text: PostgreSQL refuses index entries over ~2.7 kB.
SEARCH_INDEXES = {"predictions": [("experiment", "created"), ("predicted_class", "created"),
                                  ("model_name", "created"), ("user", "created")]}


def open_accounts(app_dir: str | Path, *, db_url: str, media_dir: str | Path,
                  accounts_options: dict[str, Any] | None = None) -> Accounts:
    """The app's tables and accounts (``accounts.db``) as ``anvil.yaml`` declares them, on ``db_url``.
    Creates and changes no table: that is :func:`create_runtime`'s (the host's) job."""
    from apphost.tables import load_schema

    app_dir = Path(app_dir)
    users = service_config(load_app_config(app_dir), "/runtime/services/anvil/users.yml")
    if users is None:
        raise ValueError("anvil.yaml has no Users service; the app needs it")
    db = Database(db_url, load_schema(app_dir / "anvil.yaml"), media_dir, indexes=SEARCH_INDEXES)
    return Accounts(
        db,
        user_table=users["server_config"].get("user_table", "users"),
        allow_signup=bool(users["client_config"].get("allow_signup")),
        session_days=float(users["client_config"].get("remember_me_days") or 7),
        **(accounts_options or {}),
    )


def create_runtime(
    app_dir: str | Path,
    *,
    db_url: str,
    media_dir: str | Path,
    call: CallFunction,
    host_functions: dict[str, CallFunction] | None = None,
    env: dict[str, str] | None = None,
    accounts_options: dict[str, Any] | None = None,
    max_workers: int = 8,
) -> AppRuntime:
    """Everything the app needs from ``anvil.yaml``: tables (created or brought up to date), accounts,
    the first lab admin, the runtime with the server modules loaded.

    ``env`` holds ``NSCFATE_ADMIN_EMAIL`` / ``NSCFATE_ADMIN_PASSWORD`` for the first lab admin (pass
    ``os.environ``); ``None`` skips creating one.
    """
    accounts = open_accounts(app_dir, db_url=db_url, media_dir=media_dir, accounts_options=accounts_options)
    accounts.db.create_tables()
    accounts.create_tables()
    if env is not None:
        accounts.ensure_first_admin(env)
    return AppRuntime(app_dir, accounts.db, accounts, call, host_functions=host_functions, max_workers=max_workers)

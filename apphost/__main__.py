"""Run the whole local host: ``python -m apphost`` (what ``make run`` starts).

One process serves, on one port: the uplink endpoint ``/_/uplink``, the Anvil app's server modules with
their REST routes ``/_/api/...`` and sign-in routes ``/_/auth/...``, and the web UI at ``/``. It keeps
``--workers N`` inference workers (``python -m uplink`` subprocesses) running, restarting any that dies,
waits until one is ready, then prints the URL and how to sign in. Ctrl-C (or SIGTERM) stops it all.

Environment:
    PORT                     port to listen on (default 3030; ``--port`` wins)
    NSCFATE_DATA_DIR         the data directory (default ``./.nscfate-data``): ``app.db`` (SQLite, WAL),
                             ``media/`` (stored images), ``uplink.key`` (this machine's uplink key, 0600)
    DATABASE_URL             a PostgreSQL URL instead of the SQLite file (``postgresql://user:pw@host/db``)
    NSCFATE_ADMIN_EMAIL      the first lab admin's email (default admin@localhost.localdomain)
    NSCFATE_ADMIN_PASSWORD   the first lab admin's password (default: a one-time password printed once)
    ANVIL_UPLINK_KEY         server uplink key to use instead of the data directory's ``uplink.key``
    ANVIL_CLIENT_UPLINK_KEY  a client uplink key (default: client uplinks are refused)

Binding beyond loopback (``--host 0.0.0.0``) is refused until a lab admin account exists (from an
earlier run, or from ``NSCFATE_ADMIN_EMAIL`` + ``NSCFATE_ADMIN_PASSWORD``): a server reachable from the
network must not start with a password that was only printed to a console.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import ipaddress
import logging
import os
import secrets
import signal
import stat
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apphost.tables import Database

logger = logging.getLogger("apphost")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 3030
DEFAULT_DATA_DIR = ".nscfate-data"
KEY_FILE = "uplink.key"
#: The worker callable that counts workers, and all those a ready worker has registered (one message each).
READY_FUNCTION = "predict_cell_fate_batch"
HOST_ONLY_SECRETS = ("NSCFATE_ADMIN_PASSWORD", "DATABASE_URL", "ANVIL_CLIENT_UPLINK_KEY")
ORPHAN_SWEEP_S = 3600.0  # how often stored files no row refers to are looked for
ORPHAN_MIN_AGE_S = 3600.0  # younger ones may belong to a write still in progress
READY_FUNCTIONS = ("predict_cell_fate", READY_FUNCTION, "list_models")
#: Seconds a worker gets to finish its calls after SIGTERM before it is killed.
WORKER_STOP_GRACE = 30.0
#: On a stop, most seconds the requests in progress get to finish (an upload is answered within ~25 s).
REQUEST_DRAIN_S = 30.0
#: Exit status of ``python -m uplink`` when it cannot load its models (a configuration error).
WORKER_EXIT_NO_MODEL = 2


#: Database driver modules SQLAlchemy imports for a URL (a missing one is a DATABASE_URL problem).
DB_DRIVER_MODULES = {"psycopg2", "psycopg", "pg8000", "asyncpg", "pymysql", "MySQLdb", "mysqlclient", "oracledb",
                     "cx_Oracle", "pyodbc", "sqlite3", "pysqlite2"}


class HostError(Exception):
    """A start-up problem the operator has to fix; the message says what and how."""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (no heavy imports, so ``--help`` is instant)."""
    parser = argparse.ArgumentParser(
        prog="python -m apphost",
        description="NSC Fate local host: the web app, its REST API, the database and the inference workers.",
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=None,
                        help=f"port to listen on (default $PORT or {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="inference workers to start and keep running (default 1; 0 for none)")
    parser.add_argument("--worker-threads", type=int, default=0, metavar="T",
                        help="TensorFlow threads per worker (default 0: every core). On a small machine, one "
                             "worker per core with --worker-threads 1 gives the most images/s; one worker with "
                             "every core the shortest wait for a single image (docs/PERFORMANCE.md)")
    parser.add_argument("--no-worker", action="store_true", help="same as --workers 0")
    parser.add_argument("--model", action="append", default=[], metavar="DIR_OR_NAME",
                        help="model for the workers (repeatable; default: every shipped model)")
    parser.add_argument("--default-model", metavar="NAME", help="model used when a request names none")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"data directory (default $NSCFATE_DATA_DIR or ./{DEFAULT_DATA_DIR})")
    parser.add_argument("--forwarded-allow-ips", metavar="IPS", default=None,
                        help="addresses of the TLS proxy whose X-Forwarded-Proto/-For headers are trusted "
                             "(comma-separated, or '*'; default $FORWARDED_ALLOW_IPS or 127.0.0.1)")
    parser.add_argument("--reset-password", metavar="EMAIL",
                        help="give this account a new one-time password (printed), end its sessions, and exit "
                             "(a lost lab admin password; works while the host runs)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


# ------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class DataPaths:
    """Where the host keeps its state."""

    root: Path

    @property
    def sqlite(self) -> Path:
        return self.root / "app.db"

    @property
    def media(self) -> Path:
        return self.root / "media"

    @property
    def key_file(self) -> Path:
        return self.root / KEY_FILE


def data_paths(arg: Path | None, env: dict[str, str], *, create: bool = True) -> DataPaths:
    """The data directory from ``--data-dir``, ``$NSCFATE_DATA_DIR`` or the default; created (0700)
    unless ``create`` is false."""
    root = (arg or Path(env.get("NSCFATE_DATA_DIR") or DEFAULT_DATA_DIR)).expanduser().resolve()
    if not create:
        return DataPaths(root)
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (root / "media").mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise HostError(f"cannot create the data directory {root}: {exc.strerror}") from None
    # A host on a directory it cannot write started, and then answered every request "try again" (the
    # database could not be written); retrying never helps, so it is said at once.
    if not all(os.access(d, os.W_OK | os.X_OK) for d in (root, root / "media")):
        raise HostError(f"the data directory {root} is not writable by this user (a read-only mount?)")
    if root.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("the data directory %s can be read by other users (it holds the accounts and the history); "
                       "chmod 700 it", root)
    return DataPaths(root)


def database_url(paths: DataPaths, env: dict[str, str]) -> str:
    """``$DATABASE_URL`` (PostgreSQL URLs get the installed psycopg 3 driver) or the SQLite file."""
    url = (env.get("DATABASE_URL") or "").strip()
    if not url:
        return f"sqlite:///{paths.sqlite}"
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def describe_database(url: str) -> str:
    """The database for messages: never the password."""
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite file {parsed.database}"
    return f"{parsed.get_backend_name()} at {parsed.render_as_string(hide_password=True)}"


def load_or_create_key(path: Path) -> str:
    """This machine's server uplink key: read from ``path``, or generated once and written there with
    0600 permissions. Never logged."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except PermissionError as exc:
        raise HostError(f"cannot write the uplink key {path}: {exc.strerror}") from None
    except FileExistsError:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("%s was readable by other users; setting its permissions to 0600", path)
            path.chmod(0o600)
        key = path.read_text(encoding="utf-8").strip()
        if len(key) < 16:
            raise HostError(f"{path} does not hold a usable uplink key; delete it and a new one is made") from None
        return key
    key = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    logger.info("generated this machine's uplink key in %s", path)
    return key


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def url_host(host: str) -> str:
    """The host part of a URL that reaches ``host`` from this machine."""
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m apphost`` and ``nscfate-host``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if args.no_worker:
        args.workers = 0
    env = dict(os.environ)
    if args.port is None:
        try:
            args.port = int(env.get("PORT") or DEFAULT_PORT)
        except ValueError:
            print(f"PORT must be a port number, not {env['PORT']!r}", file=sys.stderr)
            return 2
    if args.workers < 0 or args.worker_threads < 0:
        print("--workers and --worker-threads must be 0 or more", file=sys.stderr)
        return 2
    if args.reset_password:
        return reset_password(args, env)
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; ignore that so the workers are
    # still stopped in order and the exit status is ours.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    # The files the host makes (SQLite's database, its journal) hold the accounts and the history: this
    # user's alone, whatever the directory a lab made for them allows.
    os.umask(0o077)
    try:
        host = LocalHost(args, env)
    except HostError as exc:
        print(f"nscfate host: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(host.serve())
    finally:
        host.close()


def reset_password(args: argparse.Namespace, env: dict[str, str]) -> int:
    """``--reset-password EMAIL``: a new one-time password for that account, on the host's database.

    Opens the accounts only: no server code, and no table is created or changed (the host, perhaps
    running now and of another version, owns them). Two short writes, the password then the sessions,
    which SQLite (WAL, busy timeout) and PostgreSQL interleave safely with a running host's."""
    import anvil.users
    import sqlalchemy as sa

    from apphost.runtime import open_accounts

    paths = data_paths(args.data_dir, env, create=False)
    url = database_url(paths, env)
    sqlite_file = sa.make_url(url).database if url.startswith("sqlite") else None
    if sqlite_file is not None and not Path(sqlite_file).is_file():  # SQLite would make an empty one
        print(f"nscfate host: no database at {sqlite_file} (is --data-dir or NSCFATE_DATA_DIR the host's?)",
              file=sys.stderr)
        return 2
    accounts = open_accounts(REPO_ROOT, db_url=url, media_dir=paths.media)
    try:
        email, password = accounts.reset_password(args.reset_password)
    except anvil.users.AuthenticationFailed as exc:
        print(f"nscfate host: {exc}", file=sys.stderr)
        return 2
    except sa.exc.SQLAlchemyError as exc:  # unreachable, or no tables yet (the host never ran on it)
        reason = str(exc.orig if getattr(exc, "orig", None) else exc).strip().splitlines()[0]
        print(f"nscfate host: cannot reset the password in the {describe_database(url)}: {reason}",
              file=sys.stderr)
        return 2
    finally:
        accounts.db.dispose()
    print(f"New one-time password for {email} (shown only now): {password}\n"
          "Sign in and change it (Account > Change password). Its other sessions were ended. If failed\n"
          "sign-ins blocked it, a running host keeps that block for up to 5 minutes.", flush=True)
    return 0


def sweep_orphan_media(db: Database, judged_before: float | None, now: float) -> float | None:
    """Remove image files no row refers to that are older than ``ORPHAN_MIN_AGE_S`` at ``now``. A write
    that fails removes its own files at once; this catches those it could not (the database was down)
    and a crash mid-write.

    Files modified before ``judged_before`` were judged by an earlier sweep and are not looked at again
    (None: look at every file, as at start). Returns the ``judged_before`` for the next sweep: unchanged
    when this one failed, None when a removal was left undone meanwhile (``db.sweep_everything``: its
    file may be older than any sweep)."""
    if db.sweep_everything:
        db.sweep_everything, judged_before = False, None
    try:
        removed = db.collect_orphan_media(ORPHAN_MIN_AGE_S, judged_before, now=now)
    except Exception as e:  # noqa: BLE001 - the database may be down: try again next time
        logger.warning("could not sweep the media store for orphan files: %s", e)
        return judged_before
    if removed:
        logger.info("removed %d stored image file(s) that no row refers to", removed)
    return now - ORPHAN_MIN_AGE_S - 60  # a minute's margin for coarse file times and clock steps


class LocalHost:
    """The assembled host: settings, database and accounts, the ASGI app, the worker supervisors."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str]):
        from apphost.app import HostSettings

        self.args = args
        self.paths = data_paths(args.data_dir, env)
        self.db_url = database_url(self.paths, env)
        key = (env.get("ANVIL_UPLINK_KEY") or "").strip() or load_or_create_key(self.paths.key_file)
        self.key_source = "ANVIL_UPLINK_KEY" if env.get("ANVIL_UPLINK_KEY", "").strip() else str(self.paths.key_file)
        self.settings = HostSettings(uplink_key=key,
                                     client_uplink_key=(env.get("ANVIL_CLIENT_UPLINK_KEY") or "").strip() or None)
        self.runtime = self._create_runtime()
        self.one_time_password_note: str | None = None
        try:
            self.admin_email = self._ensure_admin(env)
        except BaseException:
            self.close()
            raise
        self.app = self._create_app()
        self.supervisors: list[WorkerSupervisor] = []
        self.worker_was_ready = False

    # ---- start-up pieces

    def _create_runtime(self):
        import sqlalchemy.exc

        from apphost.runtime import create_runtime
        from apphost.tables import SchemaError

        try:
            return create_runtime(
                REPO_ROOT, db_url=self.db_url, media_dir=self.paths.media, env=None,
                call=lambda name, *a, **k: self.app.state.hub.call_sync(name, *a, **k),
                host_functions={"nscfate_host_status": self._host_status})
        except sqlalchemy.exc.ArgumentError as exc:  # e.g. "postgresql//...": not a URL at all
            raise HostError("DATABASE_URL cannot be read as a database URL (not shown: it may hold a "
                            "password); the form is postgresql://USER:PW@HOST/DATABASE") from None
        except sqlalchemy.exc.OperationalError as exc:
            raise HostError(f"cannot open the database ({describe_database(self.db_url)}): "
                            f"{str(exc.orig).strip().splitlines()[0] if exc.orig else exc}") from None
        except (sqlalchemy.exc.NoSuchModuleError, ImportError) as exc:
            # only a missing database driver is the URL's fault; any other import error is a bug to show
            if isinstance(exc, ImportError) and (exc.name or "").split(".")[0] not in DB_DRIVER_MODULES:
                raise
            raise HostError(f"DATABASE_URL names a database driver that is not installed ({exc}); "
                            "PostgreSQL (postgresql://...) and SQLite are supported") from None
        except SchemaError as exc:  # anvil.yaml's db_schema is invalid, or the database has other column types
            raise HostError(f"the tables of anvil.yaml cannot be used with this database: {exc}") from None

    def _ensure_admin(self, env: dict[str, str]) -> str:
        """The first lab admin (see the module docstring); its email for the sign-in message."""
        import anvil.users

        accounts = self.runtime.accounts
        admins = accounts.users.search(role="lab_admin", enabled=True)
        if len(admins) == 0 and not is_loopback(self.args.host) and not (
                env.get("NSCFATE_ADMIN_EMAIL") and env.get("NSCFATE_ADMIN_PASSWORD")):
            raise HostError(
                f"refusing to listen on {self.args.host}: no lab admin account exists yet. Set "
                "NSCFATE_ADMIN_EMAIL and NSCFATE_ADMIN_PASSWORD, or start once on 127.0.0.1 and sign in first.")
        out = io.StringIO()
        try:
            accounts.ensure_first_admin(env, out=out)
        except (anvil.users.PasswordNotAcceptable, anvil.users.AuthenticationFailed) as exc:
            raise HostError(
                f"cannot create the lab admin from NSCFATE_ADMIN_EMAIL/NSCFATE_ADMIN_PASSWORD: {exc}") from None
        if out.getvalue().strip():
            # Held back for the ready message, so it is not lost among the workers' start-up logs.
            self.one_time_password_note = out.getvalue().strip()
        admins = accounts.users.search(role="lab_admin", enabled=True)
        return admins[0]["email"] if len(admins) else "(none)"

    def _create_app(self):
        from apphost.app import create_app, web_ui_routes
        from apphost.http_api import api_routes

        return create_app(self.settings, app_routes=lambda hub: [*api_routes(self.runtime), *web_ui_routes()])

    def _host_status(self) -> dict[str, int]:
        return {"workers": self.app.state.hub.registrations().get(READY_FUNCTION, 0)}

    def close(self) -> None:
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.close()
            runtime.db.dispose()
            self.runtime = None
        if self.one_time_password_note:  # never shown (start-up failed): show it now, it exists only here
            print(self.one_time_password_note, flush=True)
            self.one_time_password_note = None

    # ---- serving

    async def _sweep_orphan_media(self) -> None:
        """:func:`sweep_orphan_media` at start (every file) and hourly."""
        judged_before = None
        while True:
            judged_before = await asyncio.to_thread(sweep_orphan_media, self.runtime.db, judged_before, time.time())
            await asyncio.sleep(ORPHAN_SWEEP_S)

    async def _stop_workers(self) -> None:
        await asyncio.gather(*(s.stop() for s in getattr(self, "supervisors", [])))

    async def serve(self) -> int:
        import uvicorn

        from apphost.draining import DrainingServer, InFlightRequests
        from apphost.protocol import MAX_FRAME_BYTES

        # log_config=None: uvicorn's loggers go to ours (stderr); its default sends access logs to stdout.
        config = uvicorn.Config(InFlightRequests(self.app), host=self.args.host, port=self.args.port,
                                ws_max_size=MAX_FRAME_BYTES, log_level=self.args.log_level.lower(), lifespan="on",
                                log_config=None, forwarded_allow_ips=self.args.forwarded_allow_ips)
        # On a stop, the uploads in progress finish before the workers are stopped (apphost.draining).
        server = DrainingServer(config, grace=REQUEST_DRAIN_S, before_close=self._stop_workers)

        async def run_server() -> bool:
            try:
                await server.serve()
            except SystemExit:  # uvicorn's way of saying it could not start (e.g. the port is in use)
                return False
            return True

        serving = asyncio.create_task(run_server())
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if serving.done():
            logger.error("the server could not start on %s port %s (see above)", self.args.host, self.args.port)
            return 1
        port = server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{url_host(self.args.host)}:{port}"
        logger.info("serving on %s (data in %s)", self.url, self.paths.root)

        sweeping = asyncio.create_task(self._sweep_orphan_media())
        fatal = asyncio.Event()
        command = worker_command(self.args, port)
        self.supervisors = [
            WorkerSupervisor(command, self.settings.uplink_key, name=f"worker-{i + 1}",
                             stopping=lambda: server.should_exit, ever_ready=lambda: self.worker_was_ready,
                             on_fatal=fatal.set)
            for i in range(self.args.workers)]
        for s in self.supervisors:
            s.start()
        status = 0
        try:
            if self.args.workers:
                ready = await self._wait_for_worker(serving, fatal)
                if not ready:
                    if fatal.is_set():
                        status = 2
                        print(no_model_help(os.environ), file=sys.stderr, flush=True)
                    server.should_exit = True
            if not server.should_exit:
                print(await self._ready_message(), flush=True)
                self.one_time_password_note = None
            await serving
        finally:
            sweeping.cancel()
            await self._stop_workers()  # done already by a stop that drained (DrainingServer)
            if not serving.done():
                server.should_exit = True
                await serving
        logger.info("stopped")
        return status

    async def _wait_for_worker(self, serving: asyncio.Task, fatal: asyncio.Event) -> bool:
        """Wait until a worker serves predictions; False if the server stopped or no worker can start."""
        hub = self.app.state.hub

        async def registered() -> None:
            for name in READY_FUNCTIONS:
                await hub.wait_for_registration(name, 1)

        ready = asyncio.create_task(registered())
        failed = asyncio.create_task(fatal.wait())
        started = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({ready, failed, serving}, timeout=20,
                                             return_when=asyncio.FIRST_COMPLETED)
                if ready in done:
                    self.worker_was_ready = True
                    return True
                if done:
                    return False
                logger.info("still waiting for a worker to load its model (%.0f s)", time.monotonic() - started)
        finally:
            for task in (ready, failed):
                task.cancel()

    async def _ready_message(self) -> str:
        hub = self.app.state.hub
        lines = ["", f"NSC Fate is running at {self.url}", ""]
        if self.one_time_password_note:
            lines += [f"  {line}" for line in self.one_time_password_note.splitlines()]
        else:
            lines.append(f"  Sign in as {self.admin_email} (lab admin) or with any enabled account.")
        workers = hub.registrations().get(READY_FUNCTION, 0)
        if self.args.workers:
            try:
                cards = await hub.call("list_models")
                models = ", ".join(
                    f"{c['name']} {c['version']}" + (" (trained on SYNTHETIC data)" if c.get("synthetic_training_data")
                                                     else "") for c in cards)
            except Exception as exc:  # noqa: BLE001 - the message is informative only
                models = f"unknown ({type(exc).__name__})"
            lines.append(f"  {workers} of {self.args.workers} worker(s) ready; model(s): {models}")
        else:
            command = f"python -m uplink --url ws://{self.url.split('://', 1)[1]}/_/uplink"
            if self.key_source == "ANVIL_UPLINK_KEY":
                lines += ["  No worker started (--workers 0). Connect workers with this host's uplink key",
                          "  (the one in ANVIL_UPLINK_KEY, set in the worker's environment too):",
                          f"    {command}"]
            else:
                lines += ["  No worker started (--workers 0). Connect workers with this host's uplink key:",
                          f"    {command} --key-file {self.paths.key_file}"]
        lines += [f"  Data: {self.paths.root} ({describe_database(self.db_url)})",
                  f"  REST API: {self.url}/_/api/ (HTTP Basic with your email and password)",
                  "  Press Ctrl-C to stop.", ""]
        return "\n".join(lines)


def no_model_help(env: Mapping[str, str]) -> str:
    """What to do when the workers found no usable model (``env``: the workers' environment)."""
    lab_models = env.get("NSCFATE_MODELS_DIR")
    where = (f"Models are looked up in {lab_models} (NSCFATE_MODELS_DIR; its registry.json names the default)"
             if lab_models else "The shipped models live in models/ (models/registry.json names the default)")
    return f"""
nscfate host: the worker could not load a model (its error is above), so nothing can be classified.
  {where}. Until a model is there,
  start with any model directory:  python -m apphost --model PATH/TO/MODEL_DIR
  (a tiny demo model, useless for real cells:  python -c "from nscfate.testing import make_tiny_model_dir;
   make_tiny_model_dir('/tmp/nscfate-demo-model')"  then  --model /tmp/nscfate-demo-model)
"""


def worker_command(args: argparse.Namespace, port: int) -> list[str]:
    """The command line of one worker (the key travels in its environment, never here)."""
    command = [sys.executable, "-m", "uplink", "--url", f"ws://{url_host(args.host)}:{port}/_/uplink",
               "--log-level", args.log_level, "--parent-pid", str(os.getpid())]
    for model in args.model:
        command += ["--model", model]
    if args.default_model:
        command += ["--default-model", args.default_model]
    if args.worker_threads:
        command += ["--intra-op-threads", str(args.worker_threads)]
    return command


class WorkerSupervisor:
    """Keeps one worker subprocess running: restarts it (with back-off) when it exits.

    A worker that exits with ``WORKER_EXIT_NO_MODEL`` while no worker was ever ready means the host is
    misconfigured (no usable model): ``on_fatal`` is called instead of retrying for ever.
    """

    def __init__(self, command: list[str], key: str | None, *, name: str, stopping: Callable[[], bool],
                 ever_ready: Callable[[], bool], on_fatal: Callable[[], None]) -> None:
        self.command = command
        self.name = name
        # The host's secrets stay with the host: a worker needs its uplink key and nothing else.
        self.env = {k: v for k, v in os.environ.items() if k not in HOST_ONLY_SECRETS}
        self.env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if key:
            self.env["ANVIL_UPLINK_KEY"] = key  # environment only: never argv, never logged
        self._stopping = stopping
        self._ever_ready = ever_ready
        self._on_fatal = on_fatal
        self._stop_requested = False
        self._task: asyncio.Task | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    def _should_stop(self) -> bool:
        return self._stop_requested or self._stopping()

    async def _run(self) -> None:
        backoff = 1.0
        while not self._should_stop():
            started = time.monotonic()
            # The worker's output joins the host's log (stderr); stdout is kept for the ready message. A
            # session of its own: a Ctrl-C at the terminal reaches the host alone, which lets the uploads in
            # progress finish before it stops the workers (apphost.draining).
            self.proc = await asyncio.create_subprocess_exec(*self.command, env=self.env, stdout=sys.stderr.fileno(),
                                                             start_new_session=True)
            logger.info("%s started (pid %d)", self.name, self.proc.pid)
            code = await self.proc.wait()
            ran = time.monotonic() - started
            await asyncio.sleep(0.5)  # a worker that exits at a stop: let the stop be seen first
            if self._should_stop():
                return
            if code == WORKER_EXIT_NO_MODEL and not self._ever_ready():
                logger.error("%s cannot load its models (exit status %d)", self.name, code)
                self._on_fatal()
                return
            backoff = 1.0 if ran > 60 else min(backoff * 2, 60.0)
            self.restarts += 1
            logger.warning("%s exited with status %s; restarting it in %.0f s", self.name, code, backoff)
            await asyncio.sleep(backoff)

    async def stop(self) -> None:
        """SIGTERM the worker, give it time to finish its calls, then kill it."""
        self._stop_requested = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), WORKER_STOP_GRACE)
            except asyncio.TimeoutError:
                logger.warning("%s did not stop within %.0f s; killing it", self.name, WORKER_STOP_GRACE)
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


if __name__ == "__main__":
    raise SystemExit(main())

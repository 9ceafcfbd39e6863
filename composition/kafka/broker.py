"""Local single-node Apache Kafka broker (KRaft, broker + controller in one JVM).

Atalaia needs a real Kafka broker for development and tests (Kafka-compatible brokers were tried
and returned wrong offsets, see the project README). Rather than asking every developer to install
Kafka, this module assembles the broker's jars from Maven Central with ``mvn`` (the list is in
``composition/kafka/pom.xml``), caches them machine-wide under ``Settings.cache_dir``, and runs
``kafka.Kafka`` as a detached background process whose state lives under
``Settings.home / "kafka"``:

``server.properties``
    Rendered by :func:`render_server_properties` on every start.
``log4j2.properties``
    Copy of the template shipped next to this module.
``data/``
    ``log.dirs`` (topic data and the KRaft metadata log, with ``meta.properties``).
``broker.log``
    The broker's log4j output and its stdout/stderr.
``broker.pid``
    Process id (also its process group id: the JVM is started in its own session).

Only 127.0.0.1 is ever bound. The public functions are safe to call from several processes at
once: start and stop take an exclusive lock on ``broker.lock`` in the data directory.

Examples
--------
>>> from atalaia.settings import Settings
>>> from composition.kafka import broker
>>> settings = Settings(home="/tmp/atalaia-demo")
>>> info = broker.start(settings)  # doctest: +SKIP
>>> broker.status(settings).running  # doctest: +SKIP
True
>>> broker.stop(settings)  # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from atalaia.settings import Settings

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.4.0"
"""Kafka version assembled by :func:`assemble_jars`; must match ``<kafka.version>`` in pom.xml."""

HOST = "127.0.0.1"
"""The only address the local broker binds and advertises."""

NODE_ID = 1
JAVA_MIN_MAJOR = 17  # Kafka 4.x brokers need Java 17+.
DEFAULT_HEAP_OPTS = ("-Xmx512m", "-Xms256m")

_PACKAGE_DIR = Path(__file__).resolve().parent
POM_FILE = _PACKAGE_DIR / "pom.xml"
LOG4J2_TEMPLATE = _PACKAGE_DIR / "log4j2.properties"

_MARKER_NAME = ".assembled.json"
_MVN_TIMEOUT_S = 1800  # A cold ~/.m2 on a slow link; a hung mvn must not hang us forever.
_LOG_ROTATE_BYTES = 10 * 1024 * 1024  # broker.log is rotated (once, to .1) on start above this.
_TAIL_LINES = 30

# Popen handles of brokers started by this process. Keeping them referenced lets us reap the child
# when it exits (so a dead broker is not mistaken for a live zombie) and avoids the
# "subprocess is still running" ResourceWarning when a handle is garbage-collected.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class BrokerError(RuntimeError):
    """The local broker could not be assembled, started or stopped; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class BrokerInfo:
    """A running local broker, as returned by :func:`start`.

    Attributes
    ----------
    pid
        Process id (and process group id) of the broker JVM.
    bootstrap
        ``host:port`` of the PLAINTEXT listener, to give to clients.
    controller_port
        Port of the KRaft CONTROLLER listener.
    data_dir
        ``Settings.home / "kafka"``: config, pid file, log and data.
    log_file
        The broker's log file.
    version
        Kafka version.
    started
        True if this call started the broker, False if it was already running.
    startup_s
        Seconds this call took (including jar assembly and waiting for a broker another process
        started).
    """

    pid: int
    bootstrap: str
    controller_port: int
    data_dir: Path
    log_file: Path
    version: str
    started: bool
    startup_s: float


@dataclasses.dataclass(frozen=True)
class BrokerStatus:
    """State of the local broker, as returned by :func:`status`.

    Attributes
    ----------
    running
        The broker process is alive and its PLAINTEXT port accepts connections.
    pid
        Process id from the pid file if that process is alive and is our broker, else None (a
        pid without ``running`` means it is still starting or is stuck).
    bootstrap
        ``host:port`` the broker listens on (from its server.properties if it was ever started,
        else what the settings ask for).
    data_dir
        ``Settings.home / "kafka"``.
    log_file
        The broker's log file (may not exist yet).
    version
        Kafka version managed by this module.
    """

    running: bool
    pid: int | None
    bootstrap: str
    data_dir: Path
    log_file: Path
    version: str


@dataclasses.dataclass(frozen=True)
class _Paths:
    """Files of one local broker, all under ``Settings.home / "kafka"``."""

    data_dir: Path

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "data"

    @property
    def server_properties(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log4j_config(self) -> Path:
        return self.data_dir / "log4j2.properties"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def lock_file(self) -> Path:
        return self.data_dir / "broker.lock"

    @property
    def meta_properties(self) -> Path:
        return self.log_dirs / "meta.properties"


def _paths(settings: Settings) -> _Paths:
    return _Paths(settings.home / "kafka")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def render_server_properties(
    *,
    broker_port: int,
    controller_port: int,
    log_dirs: Path | str,
    node_id: int = NODE_ID,
    host: str = HOST,
    retention_hours: int = 24,
    retention_bytes: int = 256 * 1024 * 1024,
    extra: Mapping[str, object] | None = None,
    extra_listeners: Mapping[str, int] | None = None,
) -> str:
    """Render ``server.properties`` of a single-node KRaft broker+controller.

    Parameters
    ----------
    broker_port
        Port of the PLAINTEXT listener clients use.
    controller_port
        Port of the KRaft CONTROLLER listener; must differ from ``broker_port``.
    log_dirs
        Directory for topic data and the metadata log.
    node_id
        KRaft node id.
    host
        Address both listeners bind and advertise; only loopback makes sense for a local broker.
    retention_hours, retention_bytes
        Time and per-partition size limits of topic data, kept small for a laptop.
    extra
        Further ``key: value`` pairs; they override the defaults above.
    extra_listeners
        More client listeners, ``{"SASL_PLAINTEXT": 19094}``: each name is also its security
        protocol (their SASL/TLS settings go in ``extra``); the PLAINTEXT listener stays for the
        broker's own traffic and the readiness check.

    Returns
    -------
    str
        The file's text, keys in a stable order.

    Raises
    ------
    ValueError
        If a port is out of range or both ports are equal.

    Examples
    --------
    >>> text = render_server_properties(broker_port=9092, controller_port=9093, log_dirs="/tmp/k")
    >>> "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093" in text.splitlines()
    True
    """
    for name, port in (("broker_port", broker_port), ("controller_port", controller_port)):
        if not 1 <= int(port) <= 65535:
            raise ValueError(f"{name} must be between 1 and 65535, got {port}")
    if broker_port == controller_port:
        raise ValueError(f"broker and controller ports must differ, both are {broker_port}")

    more = dict(extra_listeners or {})
    listeners = ",".join(
        [f"PLAINTEXT://{host}:{broker_port}", f"CONTROLLER://{host}:{controller_port}"]
        + [f"{name}://{host}:{p}" for name, p in more.items()]
    )
    protocol_map = ",".join(["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT"] + [f"{n}:{n}" for n in more])
    props: dict[str, object] = {
        # One JVM is both the KRaft controller and the broker.
        "process.roles": "broker,controller",
        "node.id": node_id,
        # Dynamic quorum (KIP-853): storage is formatted with `--standalone`, which requires
        # controller.quorum.bootstrap.servers and forbids controller.quorum.voters.
        "controller.quorum.bootstrap.servers": f"{host}:{controller_port}",
        "listeners": listeners,
        "advertised.listeners": listeners,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": protocol_map,
        "log.dirs": str(log_dirs),
        # A single node cannot hold the default 3 replicas of the internal topics.
        "offsets.topic.replication.factor": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "default.replication.factor": 1,
        "min.insync.replicas": 1,
        # Atalaia creates every topic explicitly with its partition count (a mismatch with Faust
        # changelogs crashes agents), so a typo must fail instead of creating a 1-partition topic.
        "auto.create.topics.enable": "false",
        "num.partitions": 1,
        # No waiting for more members before the first rebalance: tests and local runs join fast.
        "group.initial.rebalance.delay.ms": 0,
        # Tests use short consumer session timeouts (Faust joins take about half of it); the
        # broker's default floor of 6 s would reject them with INVALID_SESSION_TIMEOUT.
        "group.min.session.timeout.ms": 1000,
        # Modest retention: this is a laptop broker, not an archive (the database keeps history).
        "log.retention.hours": retention_hours,
        "log.retention.bytes": retention_bytes,
        "log.segment.bytes": 64 * 1024 * 1024,
        "log.retention.check.interval.ms": 300000,
    }
    if extra:
        props.update(extra)
    lines = [
        "# Generated by composition.kafka.broker on every start; edits are overwritten.",
        f"# Single-node Kafka {KAFKA_VERSION} (KRaft broker+controller) bound to {host} only.",
    ]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def _read_properties(path: Path) -> dict[str, str]:
    """Parse a simple ``key=value`` properties file (enough for the files we write)."""
    props: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", "!")):
                continue
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


def _broker_port(settings: Settings) -> int:
    """Port of the first bootstrap server; the local broker always binds it on 127.0.0.1.

    Raises
    ------
    BrokerError
        If the first bootstrap server is not a loopback address: the local broker would not be
        reachable there.
    """
    first = settings.bootstrap_servers[0]
    host, _, port = first.rpartition(":")
    if host.strip("[]") not in {"127.0.0.1", "localhost", "::1"}:
        raise BrokerError(
            f"ATALAIA_KAFKA_BOOTSTRAP={settings.kafka_bootstrap} points at {host}, but the local broker only "
            f"listens on {HOST}. Set ATALAIA_KAFKA_BOOTSTRAP={HOST}:{port} to use the local broker, or leave "
            "it as is and do not start the local broker when you use a remote Kafka."
        )
    return int(port)


def _check_ports(broker_port: int, controller_port: int) -> None:
    if broker_port == controller_port:
        raise BrokerError(
            f"ATALAIA_KAFKA_BOOTSTRAP and ATALAIA_KAFKA_CONTROLLER_PORT both use port {broker_port}. "
            "Set ATALAIA_KAFKA_CONTROLLER_PORT to another free port (default 9093)."
        )
    if not 1 <= controller_port <= 65535:
        raise BrokerError(f"ATALAIA_KAFKA_CONTROLLER_PORT={controller_port} is not a port; use 1-65535 (default 9093).")


# --------------------------------------------------------------------------------------------
# Java and jars
# --------------------------------------------------------------------------------------------


def _find_java() -> str:
    """Path of the ``java`` to run: ``$JAVA_HOME/bin/java`` first (as Kafka's scripts do), else PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        java = str(Path(java_home) / "bin" / "java")
    else:
        found = shutil.which("java")
        if found is None:
            raise BrokerError(
                f"`java` was not found. Kafka {KAFKA_VERSION} needs Java {JAVA_MIN_MAJOR}+: install it with "
                "`sudo apt-get install openjdk-17-jre-headless` (Debian/Ubuntu) or set JAVA_HOME."
            )
        java = found
    _check_java_version(java)
    return java


_JAVA_CHECKED: set[str] = set()


def _check_java_version(java: str) -> None:
    if java in _JAVA_CHECKED:
        return
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"`{java} -version` failed ({exc}); check your Java installation.") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match:
        major = int(match.group(1))
        if major == 1 and match.group(2):  # "1.8.0_392" style
            major = int(match.group(2))
        if major < JAVA_MIN_MAJOR:
            raise BrokerError(
                f"{java} is Java {major}, but Kafka {KAFKA_VERSION} needs Java {JAVA_MIN_MAJOR}+. Install "
                "`openjdk-17-jre-headless` (Debian/Ubuntu) and put it first on PATH or set JAVA_HOME."
            )
    _JAVA_CHECKED.add(java)


def _find_mvn() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "`mvn` (Apache Maven) was not found; it downloads the Kafka broker jars once. Install it with "
            "`sudo apt-get install maven` (Debian/Ubuntu)."
        )
    return mvn


def _kafka_home(settings: Settings) -> Path:
    return settings.cache_dir / f"kafka-{KAFKA_VERSION}"


def libs_dir(settings: Settings) -> Path:
    """Directory of the assembled broker jars (it may not exist yet; see :func:`assemble_jars`)."""
    return _kafka_home(settings) / "libs"


def _pom_sha256() -> str:
    return hashlib.sha256(POM_FILE.read_bytes()).hexdigest()


def _assembled(libs: Path, marker: Path, pom_sha: str) -> bool:
    """True if ``libs`` holds every jar a previous successful assembly from this pom recorded."""
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    jars = data.get("jars") or []
    return (
        data.get("pom_sha256") == pom_sha
        and data.get("kafka_version") == KAFKA_VERSION
        and bool(jars)
        and all((libs / name).is_file() for name in jars)
    )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock, so concurrent CLI calls and tests don't race each other."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_mvn(mvn: str, args: list[str], cwd: Path) -> None:
    cmd = [mvn, "-B", "-q", "--no-transfer-progress", "-Dstyle.color=never", *args]
    log.debug("running %s", cmd)
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=_MVN_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(
            f"Maven did not finish within {_MVN_TIMEOUT_S} s while downloading the Kafka jars. Check the network "
            "access to Maven Central (or the mirror in ~/.m2/settings.xml) and try again."
        ) from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-_TAIL_LINES:])
        raise BrokerError(
            f"Maven failed (exit {proc.returncode}) to download the Kafka {KAFKA_VERSION} jars. It needs access to "
            "Maven Central (or a mirror configured in ~/.m2/settings.xml); fix that and run again. Maven said:\n"
            f"{tail}"
        )


def assemble_jars(settings: Settings, console: Console | None = None) -> Path:
    """Download the Kafka broker and its runtime dependencies into the machine-wide cache.

    Runs ``mvn dependency:copy-dependencies`` on ``composition/kafka/pom.xml`` into
    ``settings.cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"``. A completed assembly is recorded in
    a marker file (with the pom's hash) and reused; an interrupted or outdated one is redone from
    scratch. Takes about 30 s with a cold Maven cache (``~/.m2``), a few seconds with a warm one.

    Parameters
    ----------
    settings
        Uses ``settings.cache_dir``.
    console
        Rich console for the progress spinner; a stderr console by default.

    Returns
    -------
    Path
        The ``libs`` directory, for ``java -cp 'libs/*'``.

    Raises
    ------
    BrokerError
        If ``mvn`` or ``java`` is missing (naming the Debian package to install), Java is older than
        17, or Maven fails (with its output).
    """
    home = _kafka_home(settings)
    libs = home / "libs"
    marker = home / _MARKER_NAME
    pom_sha = _pom_sha256()
    if _assembled(libs, marker, pom_sha):
        return libs

    # Check both tools before the (slow) download: jars without a Java to run them are useless.
    mvn = _find_mvn()
    _find_java()

    with _file_lock(settings.cache_dir / f"kafka-{KAFKA_VERSION}.lock"):
        # Another process may have finished the job while we waited for the lock.
        if _assembled(libs, marker, pom_sha):
            return libs
        con = console if console is not None else _stderr_console()
        started = time.monotonic()
        # Download into a scratch directory and rename it into place at the end, so an interrupted
        # run (Ctrl-C, network error) never leaves a half-filled libs/ that looks usable.
        workdir = home / f".assemble-{os.getpid()}"
        shutil.rmtree(workdir, ignore_errors=True)
        staging = workdir / "libs"
        staging.mkdir(parents=True)
        try:
            # mvn runs on a copy of the pom so nothing (target/, caches) is written into the
            # installed package, which may be read-only.
            shutil.copy2(POM_FILE, workdir / "pom.xml")
            with con.status(f"Assembling Kafka {KAFKA_VERSION} jars with Maven (first run only, ~30 s)…"):
                _run_mvn(
                    mvn,
                    [
                        "-f",
                        str(workdir / "pom.xml"),
                        "dependency:copy-dependencies",
                        f"-DoutputDirectory={staging}",
                        "-DincludeScope=runtime",
                    ],
                    cwd=workdir,
                )
            jars = sorted(p.name for p in staging.glob("*.jar"))
            if not any(name.startswith(f"kafka_2.13-{KAFKA_VERSION}") for name in jars):
                raise BrokerError(
                    f"Maven finished but kafka_2.13-{KAFKA_VERSION}.jar is not among the {len(jars)} jars it copied; "
                    f"check {POM_FILE}."
                )
            marker.unlink(missing_ok=True)
            shutil.rmtree(libs, ignore_errors=True)
            staging.rename(libs)
            marker.write_text(
                json.dumps({"kafka_version": KAFKA_VERSION, "pom_sha256": pom_sha, "jars": jars}, indent=1),
                encoding="utf-8",
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        elapsed = time.monotonic() - started
        log.info("assembled %d Kafka %s jars in %s (%.1f s)", len(jars), KAFKA_VERSION, libs, elapsed)
    return libs


def _stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


# --------------------------------------------------------------------------------------------
# Processes and ports
# --------------------------------------------------------------------------------------------


def _port_answers(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _port_free(port: int, host: str = HOST) -> bool:
    """True if we could bind ``host:port`` now (a listener on 0.0.0.0 or 127.0.0.1 makes it False)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: connections in TIME_WAIT from a broker we just stopped don't count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _pid_alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else (and thus not our broker; see _is_our_broker)
    # A child of this process that exited but was not reaped still answers kill(0).
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _is_our_broker(pid: int, paths: _Paths) -> bool:
    """True if ``pid`` is alive and is a ``kafka.Kafka`` JVM started on this data directory.

    Guards against a stale pid file whose pid was reused by an unrelated process (e.g. after a
    reboot): stop() must never signal a stranger's process group.
    """
    if not _pid_alive(pid):
        return False
    cmdline_file = Path(f"/proc/{pid}/cmdline")
    try:
        args = cmdline_file.read_bytes().split(b"\0")
    except FileNotFoundError:
        # Gone if /proc works here; without /proc (macOS) all we can do is trust the pid file.
        return not Path("/proc/self/cmdline").exists()
    except PermissionError:
        return False
    return b"kafka.Kafka" in args and str(paths.server_properties).encode() in args


def _read_pid(paths: _Paths) -> int | None:
    try:
        return int(paths.pid_file.read_text(encoding="utf-8").strip())
    except (FileNotFoundError, ValueError):
        return None


def _running_pid(paths: _Paths) -> int | None:
    """Pid of our broker from the pid file, or None (a stale pid file is removed)."""
    pid = _read_pid(paths)
    if pid is None:
        return None
    if _is_our_broker(pid, paths):
        return pid
    log.info("removing stale pid file %s (pid %d is not a running broker)", paths.pid_file, pid)
    paths.pid_file.unlink(missing_ok=True)
    return None


def _configured_ports(paths: _Paths) -> tuple[int, int] | None:
    """(broker, controller) ports from the server.properties a broker was started with."""
    listeners = _read_properties(paths.server_properties).get("listeners", "")
    ports = dict(re.findall(r"(\w+)://[^,]*:(\d+)", listeners))
    try:
        return int(ports["PLAINTEXT"]), int(ports["CONTROLLER"])
    except (KeyError, ValueError):
        return None


def _log_tail(path: Path, offset: int = 0, lines: int = _TAIL_LINES) -> str:
    """Last ``lines`` lines of ``path`` written after byte ``offset``."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return "(no log written)"
    text = data.decode("utf-8", errors="replace").rstrip()
    return "\n".join(text.splitlines()[-lines:]) if text else "(log is empty)"


def _admin_ready(bootstrap: str, timeout_s: float) -> bool:
    """True if a kafka-python admin client can describe the cluster and sees a broker."""
    from kafka.errors import KafkaError

    from atalaia.kafka.clients import plaintext_admin

    timeout_ms = max(1000, int(timeout_s * 1000))
    admin = None
    try:
        admin = plaintext_admin(
            bootstrap,
            "atalaia-broker-check",
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
        )
        cluster = admin.describe_cluster()
        admin.list_topics()
        return bool(cluster.get("brokers"))
    except (KafkaError, OSError, ValueError) as exc:
        log.debug("broker not ready yet: %r", exc)
        return False
    finally:
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()


def _wait_ready(
    pid: int,
    paths: _Paths,
    bootstrap: str,
    port: int,
    deadline: float,
    log_offset: int,
) -> None:
    """Block until the broker at ``bootstrap`` serves metadata, or raise BrokerError."""
    while True:
        if not _pid_alive(pid):
            paths.pid_file.unlink(missing_ok=True)
            raise BrokerError(
                f"The Kafka broker (pid {pid}) exited during start-up. Last lines of {paths.log_file}:\n"
                f"{_log_tail(paths.log_file, log_offset)}\n"
                f"Fix the cause above and run start again; if the data is corrupt, delete {paths.data_dir} "
                "(this loses all topics)."
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(
                f"The Kafka broker (pid {pid}) did not become ready on {bootstrap} in time. It is left running; "
                f"stop it with `atalaia kafka stop`, or wait and check again. Last lines of {paths.log_file}:\n"
                f"{_log_tail(paths.log_file, log_offset)}"
            )
        if _port_answers(port) and _admin_ready(bootstrap, min(5.0, max(1.0, remaining))):
            return
        time.sleep(0.25)


# --------------------------------------------------------------------------------------------
# Start, stop, status
# --------------------------------------------------------------------------------------------


def _java_base_cmd(java: str, libs: Path, paths: _Paths, heap: tuple[str, ...]) -> list[str]:
    return [
        java,
        *heap,
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        # A broker that ran out of heap is broken; exit so that status/start notice it.
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={paths.log4j_config}",
        f"-Datalaia.kafka.log.file={paths.log_file}",
        f"-Dkafka.logs.dir={paths.data_dir}",
        "-cp",
        f"{libs}/*",  # Java expands the wildcard itself (no shell involved).
    ]


def _format_storage(java: str, libs: Path, paths: _Paths, scram_users: Mapping[str, str] | None = None) -> None:
    """Format the KRaft metadata log once (``kafka-storage.sh random-uuid`` + ``format --standalone``),
    with SCRAM-SHA-512 credentials for ``scram_users`` (``--add-scram``, Kafka's own tool)."""
    base = _java_base_cmd(java, libs, paths, ("-Xmx256m",))

    def run_tool(*args: str) -> str:
        proc = subprocess.run(
            [*base, "kafka.tools.StorageTool", *args],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        output = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            raise BrokerError(
                f"Formatting the Kafka storage in {paths.log_dirs} failed (StorageTool {args[0]}, exit "
                f"{proc.returncode}):\n{output}\nIf {paths.log_dirs} holds a broken earlier attempt, delete "
                f"{paths.data_dir} and start again."
            )
        return proc.stdout.strip()

    cluster_id = run_tool("random-uuid").splitlines()[-1].strip()
    scram: list[str] = []
    for user, password in (scram_users or {}).items():
        scram += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
    output = run_tool("format", "--standalone", "-t", cluster_id, "-c", str(paths.server_properties), *scram)
    last_line = output.splitlines()[-1] if output else ""
    log.info("formatted %s with cluster id %s: %s", paths.log_dirs, cluster_id, last_line)


def _rotate_log(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > _LOG_ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))


def _heap_opts() -> tuple[str, ...]:
    # Same escape hatch as Kafka's own scripts.
    env = os.environ.get("KAFKA_HEAP_OPTS", "").split()
    return tuple(env) if env else DEFAULT_HEAP_OPTS


def reachable(settings: Settings, timeout_s: float = 5.0) -> bool:
    """True if a Kafka broker answers at ``settings.kafka_bootstrap`` (a local one or any other).

    Commands that can use any broker (``atalaia demo``) check this before starting a local one.
    """
    return _admin_ready(settings.kafka_bootstrap, timeout_s)


def start(
    settings: Settings,
    console: Console | None = None,
    timeout: float = 90,
    *,
    extra_listeners: Mapping[str, int] | None = None,
    properties: Mapping[str, object] | None = None,
    scram_users: Mapping[str, str] | None = None,
) -> BrokerInfo:
    """Start the local single-node Kafka broker, or return the one already running.

    The broker listens on 127.0.0.1 only: PLAINTEXT on the port of the first server in
    ``settings.kafka_bootstrap``, CONTROLLER on ``settings.kafka_controller_port``. Its files live
    in ``settings.home / "kafka"``; the storage is formatted on first use. Jars are assembled first
    if needed (see :func:`assemble_jars`). The call returns once the port accepts connections and a
    Kafka admin client can list topics; the broker keeps running after this process exits.

    Parameters
    ----------
    settings
        Uses ``home``, ``cache_dir``, ``kafka_bootstrap`` and ``kafka_controller_port``.
    console
        Rich console for progress spinners; a stderr console by default.
    timeout
        Seconds to wait for the broker to become ready, not counting jar assembly.
    extra_listeners, properties
        More listeners and ``server.properties`` entries (see :func:`render_server_properties`):
        a SASL or TLS listener next to the PLAINTEXT one, as the security tests use.
    scram_users
        SCRAM-SHA-512 users and passwords written into the storage when it is formatted.

    Returns
    -------
    BrokerInfo
        The running broker; ``started`` tells whether this call started it.

    Raises
    ------
    BrokerError
        If a port is taken by another program, the bootstrap address is not loopback, a broker
        from this data directory runs with other ports, Java/Maven is missing, the broker exits
        during start-up (the message holds the end of its log), or it is not ready in ``timeout``
        seconds (it is then left running; see :func:`stop`).
    """
    t0 = time.monotonic()
    port = _broker_port(settings)
    controller_port = settings.kafka_controller_port
    _check_ports(port, controller_port)
    paths = _paths(settings)
    bootstrap = f"{HOST}:{port}"
    con = console if console is not None else _stderr_console()

    with _file_lock(paths.lock_file):
        pid = _running_pid(paths)
        if pid is not None:
            ports = _configured_ports(paths)
            if ports is not None and ports != (port, controller_port):
                raise BrokerError(
                    f"A local broker from {paths.data_dir} is already running (pid {pid}) on ports {ports[0]} "
                    f"(PLAINTEXT) and {ports[1]} (CONTROLLER), but the settings ask for {port} and {controller_port}. "
                    "Stop it with `atalaia kafka stop` first, or change ATALAIA_KAFKA_BOOTSTRAP / "
                    "ATALAIA_KAFKA_CONTROLLER_PORT back."
                )
            if not _port_answers(port):
                # Started by another process that has not finished waiting yet (or stuck): wait
                # instead of starting a second JVM on the same data directory.
                with con.status(f"Waiting for the Kafka broker (pid {pid}) on {bootstrap}…"):
                    _wait_ready(pid, paths, bootstrap, port, time.monotonic() + timeout, 0)
            log.debug("Kafka broker already running (pid %d) on %s", pid, bootstrap)
            return BrokerInfo(
                pid, bootstrap, controller_port, paths.data_dir, paths.log_file, KAFKA_VERSION, False,
                time.monotonic() - t0,
            )  # fmt: skip

        # Nothing of ours runs: both ports must be free now, or the JVM would die on bind.
        for what, p, var in (
            ("broker (PLAINTEXT)", port, "ATALAIA_KAFKA_BOOTSTRAP=127.0.0.1:<port>"),
            ("controller", controller_port, "ATALAIA_KAFKA_CONTROLLER_PORT=<port>"),
            *((f"{name} client", p, "another port") for name, p in (extra_listeners or {}).items()),
        ):
            if not _port_free(p):
                raise BrokerError(
                    f"Port {p} on {HOST}, wanted for the Kafka {what} listener, is already in use by another "
                    f"program (not a broker started from {paths.data_dir}). Stop that program (`ss -ltnp "
                    f"'sport = :{p}'` shows it), or choose a free port with {var}."
                )

        libs = assemble_jars(settings, console=con)
        java = _find_java()

        paths.data_dir.mkdir(parents=True, exist_ok=True)
        paths.log_dirs.mkdir(parents=True, exist_ok=True)
        paths.server_properties.write_text(
            render_server_properties(
                broker_port=port,
                controller_port=controller_port,
                log_dirs=paths.log_dirs,
                extra=properties,
                extra_listeners=extra_listeners,
            ),
            encoding="utf-8",
        )
        # Copied (not referenced) so a package upgrade never changes a running broker's config.
        shutil.copyfile(LOG4J2_TEMPLATE, paths.log4j_config)

        with con.status(f"Starting Kafka {KAFKA_VERSION} on {bootstrap}…"):
            if not paths.meta_properties.exists():
                _format_storage(java, libs, paths, scram_users)

            _rotate_log(paths.log_file)
            cmd = [*_java_base_cmd(java, libs, paths, _heap_opts()), "kafka.Kafka", str(paths.server_properties)]
            with open(paths.log_file, "ab") as log_handle:
                log_offset = log_handle.tell()
                log_handle.write(f"\n===== atalaia: starting Kafka {KAFKA_VERSION} on {bootstrap} =====\n".encode())
                log_handle.flush()
                log.info("starting Kafka broker: %s", " ".join(cmd))
                proc = subprocess.Popen(
                    cmd,
                    cwd=paths.data_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log_handle,
                    stderr=subprocess.STDOUT,
                    # Own session/process group: Ctrl-C in the terminal that started it does not
                    # kill the broker, and stop() can signal the whole group.
                    start_new_session=True,
                )
            _CHILDREN[proc.pid] = proc
            paths.pid_file.write_text(f"{proc.pid}\n", encoding="utf-8")
            try:
                _wait_ready(proc.pid, paths, bootstrap, port, time.monotonic() + timeout, log_offset)
            except BrokerError:
                raise
            except BaseException:
                # Interrupted (Ctrl-C) while waiting: don't leave a half-started broker behind.
                _terminate(proc.pid, paths, 10)
                raise

    startup_s = time.monotonic() - t0
    log.info("Kafka broker ready on %s (pid %d) in %.1f s", bootstrap, proc.pid, startup_s)
    return BrokerInfo(
        proc.pid, bootstrap, controller_port, paths.data_dir, paths.log_file, KAFKA_VERSION, True, startup_s
    )


def _terminate(pid: int, paths: _Paths, timeout: float) -> None:
    """SIGTERM the broker's process group, SIGKILL it after ``timeout`` s, remove the pid file."""

    def signal_group(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            try:
                os.killpg(pid, sig)
            except PermissionError:
                os.kill(pid, sig)

    signal_group(signal.SIGTERM)  # Kafka shuts down cleanly on SIGTERM (flushes, closes logs).
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid):
        log.warning("Kafka broker (pid %d) did not stop within %.0f s; killing it", pid, timeout)
        signal_group(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    paths.pid_file.unlink(missing_ok=True)


def stop(settings: Settings, timeout: float = 30) -> bool:
    """Stop the local broker started from ``settings.home / "kafka"``.

    Sends SIGTERM to the broker's process group, waits up to ``timeout`` seconds for a clean
    shutdown, then sends SIGKILL. Safe to call when nothing runs.

    Parameters
    ----------
    settings
        Uses ``settings.home``.
    timeout
        Seconds to wait after SIGTERM before SIGKILL.

    Returns
    -------
    bool
        True if a running broker was stopped, False if none was running.
    """
    paths = _paths(settings)
    if not paths.data_dir.exists():
        return False
    with _file_lock(paths.lock_file):
        pid = _running_pid(paths)
        if pid is None:
            return False
        log.info("stopping Kafka broker (pid %d)", pid)
        _terminate(pid, paths, timeout)
        return True


def status(settings: Settings) -> BrokerStatus:
    """Report whether the local broker runs, without starting or changing anything.

    Parameters
    ----------
    settings
        Uses ``settings.home`` (and ``kafka_bootstrap`` when the broker was never started).

    Returns
    -------
    BrokerStatus
        ``running`` is True when the process is alive and its port accepts connections.
    """
    paths = _paths(settings)
    ports = _configured_ports(paths)
    if ports is not None:
        port = ports[0]
    else:
        try:
            port = _broker_port(settings)
        except BrokerError:
            port = int(settings.bootstrap_servers[0].rpartition(":")[2])
    pid = _read_pid(paths)
    if pid is not None and not _is_our_broker(pid, paths):
        pid = None  # stale; start/stop clean it up under the lock
    running = pid is not None and _port_answers(port)
    return BrokerStatus(running, pid, f"{HOST}:{port}", paths.data_dir, paths.log_file, KAFKA_VERSION)

"""Real servers for the remote backends, on loopback, started and stopped by the tests.

* S3: moto's server mode (a real HTTP endpoint that boto3 talks to as to AWS), behind a small TCP
  forwarder that a test can stop and restart to simulate an outage without losing moto's in-memory
  buckets.
* ssh: a throwaway ``sshd -f CONFIG`` with its own host key, letting the ``postgres`` user in with a
  generated client key (``UsePAM yes``: the postgres account is locked, and without PAM sshd refuses
  a locked account). Also behind a forwarder.

Both are session fixtures: one server per test session (per xdist worker), stopped at its end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.pgharness import free_port, give_to_pg, pg_workdir, running_as_root

SSHD = Path("/usr/sbin/sshd")
BUCKET = "walkeeper-test"
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


class TcpForwarder:
    """Forwards 127.0.0.1:port to a target port; ``stop()`` drops the listener *and* open connections."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._lose: list[bytes] = []  # request markers whose answer is lost once each
        self.lost = 0

    def lose_answer_once(self, marker: bytes) -> None:
        """The next request containing ``marker`` reaches the server, but its answer never reaches the client.

        The client's connection is cut instead, as when a network drops between a server's commit and
        its reply.
        """
        with self._lock:
            self._lose.append(marker)

    def start(self) -> TcpForwarder:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    @property
    def running(self) -> bool:
        return self._listener is not None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns |= {client, upstream}
            cut = threading.Event()  # set when this connection's next answer is to be lost
            threading.Thread(target=self._pipe, args=(client, upstream, cut, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, cut, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, cut: threading.Event, requests: bool) -> None:
        try:
            while data := src.recv(65536):
                if requests and self._lose:
                    with self._lock:
                        marker = next((m for m in self._lose if m in data), None)
                        if marker is not None:
                            self._lose.remove(marker)
                            cut.set()
                if not requests and cut.is_set():
                    self.lost += 1
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_RDWR)  # the server answered; the client never hears it
                    dst.close()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


def wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# -- S3 -------------------------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint: str  # through the forwarder: what walkeeper is configured with
    direct_endpoint: str  # straight to moto: for the tests' own set-up calls
    forwarder: TcpForwarder
    bucket: str = BUCKET

    def url(self, name: str | None = None) -> str:
        return f"s3://{self.bucket}/{name or 't-' + uuid.uuid4().hex[:12]}"

    def config_toml(self, **extra: object) -> str:
        settings = {"endpoint_url": self.endpoint, "region": "us-east-1", "addressing_style": "path",
                    "connect_timeout": 2.0, "read_timeout": 10.0, "multipart_chunk_size": 5 * 1024 * 1024,
                    **extra}
        return "[s3]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in settings.items())

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.direct_endpoint, region_name="us-east-1")


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto in server mode on a free loopback port, with dummy credentials in the environment.

    The credentials go into os.environ so that everything started from the tests inherits them:
    walkeeper subprocesses and PostgreSQL (pg_ctl passes its environment on to archive_command).
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    saved = {k: os.environ.get(k) for k in DUMMY_AWS_ENV}
    os.environ.update(DUMMY_AWS_ENV)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_for_port(port)
    forwarder = TcpForwarder(port).start()
    s3 = S3Server(f"http://127.0.0.1:{forwarder.port}", f"http://127.0.0.1:{port}", forwarder)
    s3.client().create_bucket(Bucket=BUCKET)
    try:
        yield s3
    finally:
        forwarder.stop()
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# -- ssh ------------------------------------------------------------------------------------


@dataclass
class SshServer:
    port: int  # sshd itself
    forwarder: TcpForwarder  # 127.0.0.1:forwarder.port -> sshd, stoppable
    identity_file: Path  # postgres-owned, 0600
    known_hosts_file: Path  # knows the host key under both ports
    workdir: Path  # postgres-owned: repositories live below it
    user: str = "postgres"
    _made: list[Path] = field(default_factory=list)

    def url(self, name: str | None = None, *, port: int | None = None) -> str:
        root = self.workdir / (name or "r-" + uuid.uuid4().hex[:12])
        return f"ssh://{self.user}@127.0.0.1:{port or self.forwarder.port}{root}"

    def config_toml(self, **extra: object) -> str:
        settings = {"identity_file": str(self.identity_file), "known_hosts_file": str(self.known_hosts_file),
                    "connect_timeout": 3, "io_timeout": 20, **extra}
        return "[ssh]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in settings.items())


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even if it is killed outright."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _sshd_config(d: Path, port: int, user: str) -> str:
    return "\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {d}/host_ed25519",
        f"PidFile {d}/sshd.pid",
        f"AuthorizedKeysFile {d}/authorized_keys",
        "UsePAM yes",  # the postgres account is locked: only PAM account checks let it in
        "StrictModes no",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        f"AllowUsers {user}",
        "MaxSessions 100",  # one shared connection carries many sessions
        "MaxStartups 100",
        "PrintMotd no",
        "LogLevel VERBOSE",
        "",
    ])


@pytest.fixture(scope="session")
def ssh_server() -> Iterator[SshServer]:
    if not SSHD.exists() or shutil.which("rsync") is None:
        raise pytest.UsageError("the ssh tests need openssh-server and rsync (apt-get install -y rsync "
                                "openssh-server; scripts/test.sh installs them)")
    if not running_as_root():
        pytest.skip("a throwaway sshd that logs in as postgres needs root")
    server_dir = Path(tempfile.mkdtemp(prefix="wk-sshd-"))  # root-owned: host key and config
    client_dir = pg_workdir("wk-sshc-")  # postgres-owned: client key, known_hosts, repositories
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", server_dir / "host_ed25519"], check=True)
    identity = client_dir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", identity], check=True)
    shutil.copy(client_dir / "id_ed25519.pub", server_dir / "authorized_keys")
    # sshd reads authorized_keys as the user logging in: let postgres through (the host key stays 0600).
    server_dir.chmod(0o755)
    (server_dir / "authorized_keys").chmod(0o644)
    port = free_port()
    (server_dir / "sshd_config").write_text(_sshd_config(server_dir, port, "postgres"))
    proc = subprocess.Popen([SSHD, "-D", "-f", server_dir / "sshd_config", "-E", server_dir / "sshd.log"],
                            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    forwarder = TcpForwarder(port)
    try:
        wait_for_port(port)
        forwarder.start()
        host_key = (server_dir / "host_ed25519.pub").read_text().split()[:2]
        known = client_dir / "known_hosts"
        known.write_text(f"[127.0.0.1]:{port},[127.0.0.1]:{forwarder.port} {' '.join(host_key)}\n")
        for path in (identity, known):
            path.chmod(0o600)
        give_to_pg(client_dir)
        yield SshServer(port, forwarder, identity, known, client_dir)
    finally:
        forwarder.stop()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if os.environ.get("WALKEEPER_KEEP_SSHD_LOG"):
            print((server_dir / "sshd.log").read_text(errors="replace"))
        shutil.rmtree(server_dir, ignore_errors=True)
        shutil.rmtree(client_dir, ignore_errors=True)

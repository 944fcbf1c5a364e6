"""ssh for the rsync backend (storage/rsync.py): one shared master connection per storage, remote scripts
run over it, and ssh/rsync failures turned into one clear error naming the host and what to check.

The master's socket lives in a private 0700 temp directory; ``close()`` (or interpreter exit) shuts it down.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Callable
from typing import Any

from walkeeper.core.config import SshConfig
from walkeeper.core.errors import ConfigError, NotFound, StorageError, TransientError

_SAFE_HOST = re.compile(r"^[A-Za-z0-9._-]+$|^\[[0-9A-Fa-f:.]+\]$")
_SAFE_USER = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]*$")
EXIT_NOT_FOUND = 44  # our remote scripts' "no such object"
_RSYNC_TRANSIENT = {10, 12, 30, 35}  # socket I/O, protocol stream, timeouts
_UNREACHABLE = (
    "connection refused", "connection timed out", "operation timed out", "no route to host",
    "network is unreachable", "connection reset", "connection closed", "broken pipe",
    "connection unexpectedly closed", "timeout, server", "kex_exchange_identification",
    "timed out", "connection lost",
)

def _shutdown_master(ssh_base: list[str], target: str, control_dir: str) -> None:
    """Ask the master connection to exit and remove its socket directory (close() and at exit)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run([*ssh_base, "-O", "exit", target], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
    shutil.rmtree(control_dir, ignore_errors=True)


def check_target(user: str | None, host: str) -> None:
    """Host and user names reach ssh's command line: only safe characters."""
    if not _SAFE_HOST.match(host):
        raise ConfigError(f"invalid ssh host {host!r}")
    if user is not None and not _SAFE_USER.match(user):
        raise ConfigError(f"invalid ssh user name {user!r}")


class SshTransport:
    """ssh to ``[user@]host[:port]`` over one master connection, opened on first use."""

    def __init__(self, user: str | None, host: str, port: int | None, settings: SshConfig) -> None:
        check_target(user, host)
        self.user, self.host, self.port = user, host, port
        self.settings = settings
        self.target = f"{user}@{host}" if user else host
        self.where = f"{self.target}:{port}" if port else self.target
        self._lock = threading.Lock()
        self._master_up = False
        self.control_dir = tempfile.mkdtemp(prefix="wk-ssh-", dir="/tmp" if len(tempfile.gettempdir()) > 60
                                            else None)
        self.ssh_base = ["ssh", *self._options()]
        self._close = weakref.finalize(self, _shutdown_master, self.ssh_base, self.target, self.control_dir)

    def _options(self) -> list[str]:
        s = self.settings
        opts = [
            "-o", "BatchMode=yes",  # never prompt: archive_command has no terminal
            "-o", f"ConnectTimeout={s.connect_timeout}",
            "-o", f"StrictHostKeyChecking={'yes' if s.strict_host_key_checking else 'accept-new'}",
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",  # a dead peer fails in ~15 s
            "-o", "LogLevel=ERROR",
            # Only _ensure_master opens the shared connection. (No ControlMaster=no here: ssh keeps the
            # first value given for an option, so it would override the master's ControlMaster=yes.)
            "-o", f"ControlPath={self.control_dir}/cm",
        ]
        if self.port:
            opts += ["-p", str(self.port)]
        if s.identity_file:
            opts += ["-i", s.identity_file, "-o", "IdentitiesOnly=yes"]
        if s.known_hosts_file:
            opts += ["-o", f"UserKnownHostsFile={s.known_hosts_file}"]
        return opts

    def ensure_master(self) -> None:
        """Open the shared connection once; its failure is the first place a bad setup shows."""
        with self._lock:
            if self._master_up:
                return
            socket_path = f"{self.control_dir}/cm"
            if os.path.exists(socket_path):
                # A master from before a network failure: reuse it if it still answers, else clear it away.
                check = subprocess.run([*self.ssh_base, "-O", "check", self.target], stdin=subprocess.DEVNULL,
                                       capture_output=True, timeout=10)
                if check.returncode == 0:
                    self._master_up = True
                    return
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(socket_path)
            cmd = [*self.ssh_base, "-o", "ControlMaster=yes", "-o", f"ControlPersist={self.settings.control_persist}",
                   "-f", "-N", self.target]
            # stderr to a file, not a pipe: the backgrounded master would hold a pipe open until it exits.
            with tempfile.TemporaryFile() as err:
                try:
                    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                          timeout=self.settings.connect_timeout + 30)
                except subprocess.TimeoutExpired:
                    raise TransientError(f"timed out connecting to {self.where}",
                                         hint=self.reach_hint()) from None
                except FileNotFoundError:
                    raise ConfigError("the ssh client is not installed", hint="install openssh-client") from None
                err.seek(0)
                stderr = err.read().decode(errors="replace")
            if proc.returncode != 0:
                raise self.failure(proc.returncode, stderr, "connecting to", None)
            self._master_up = True

    def reach_hint(self) -> str:
        return (f"check that {self.host} is up and resolvable, that sshd listens on port {self.port or 22}, "
                "and that no firewall blocks it")

    def failure(self, code: int, stderr: str, action: str, key: str | None, *, rsync: bool = False
                 ) -> StorageError:
        """A failed ssh/rsync call as a clear error naming the host and what to check."""
        text = stderr.strip()
        lower = text.lower()
        line = text.splitlines()[-1] if text else f"exit status {code}"
        what = f"{action} {key} on {self.where}" if key else f"{action} {self.where}"
        if "host key verification failed" in lower or "remote host identification has changed" in lower or \
                ("host key for" in lower and "not known" in lower):
            known = self.settings.known_hosts_file or "~/.ssh/known_hosts of the user running walkeeper"
            return StorageError(
                f"{what}: the host key of {self.host} is unknown or has changed ({line})",
                hint=f"verify the server's key and add it to {known}, e.g. "
                     f"ssh-keyscan -p {self.port or 22} {self.host} >> FILE",
            )
        if "permission denied (" in lower or "too many authentication failures" in lower:
            key_file = self.settings.identity_file or "the default ssh keys"
            return StorageError(
                f"{what}: {self.host} refused the login of {self.user or 'the current user'} with {key_file} ({line})",
                hint="check [ssh] identity_file and that its public key is in the server's authorized_keys "
                     "for that user",
            )
        if "could not resolve hostname" in lower or "name or service not known" in lower:
            return StorageError(f"{what}: cannot resolve host name {self.host} ({line})",
                                hint="check the host in repo")
        if "bad permissions" in lower or "unprotected private key" in lower or "no such identity" in lower:
            return StorageError(f"{what}: ssh cannot use the identity file ({line})",
                                hint="the key must exist, be owned by the user running walkeeper, mode 0600")
        if "no space left" in lower or "disk quota" in lower:
            return StorageError(f"{what}: the remote file system is full ({line})")
        if code == 255 or (rsync and code in _RSYNC_TRANSIENT) or any(s in lower for s in _UNREACHABLE):
            self._master_up = False  # the shared connection may be gone: check it before the next call
            return TransientError(f"{what}: cannot reach the server ({line})", hint=self.reach_hint())
        return StorageError(f"{what} failed (exit {code}): {line}")

    def run(self, script: str, action: str, key: str | None, *, check: bool = True,
             ok: tuple[int, ...] = (0,), input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run ``script`` with sh on the remote host over the shared connection."""
        self.ensure_master()
        cmd = [*self.ssh_base, self.target, "sh -c " + shlex.quote(script)]
        timeout = self.settings.connect_timeout + self.settings.io_timeout + 30
        try:
            proc = subprocess.run(cmd, stdin=None if input is not None else subprocess.DEVNULL, input=input,
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TransientError(f"{action} {key or ''} on {self.where}: no answer in {timeout} s",
                                 hint=self.reach_hint()) from None
        if check and proc.returncode not in ok:
            raise self.failure(proc.returncode, proc.stderr.decode(errors="replace"), action, key)
        return proc

    def close(self) -> None:
        self._close()


class RemoteFile(io.RawIOBase):
    """The stdout of a remote ``cat``; its exit status is checked at EOF, so a cut stream is an error."""

    def __init__(self, proc: subprocess.Popen[bytes], err: Any, first: bytes, url: str,
                 failure: Callable[..., StorageError], key: str) -> None:
        self._proc, self._err, self._pending = proc, err, first
        self._url, self._failure, self._key = url, failure, key
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending and not self._done:
            assert self._proc.stdout is not None
            self._pending = self._proc.stdout.read1(len(buffer))
            if not self._pending:
                self.finish()
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def finish(self) -> None:
        """At EOF: wait for the remote command and turn a non-zero exit into the matching error."""
        if self._done:
            return
        self._done = True
        code = self._proc.wait()
        self._err.seek(0)
        stderr = self._err.read().decode(errors="replace")
        self._err.close()
        if code == EXIT_NOT_FOUND:
            raise NotFound(f"{self._key} not found in {self._url}")
        if code != 0:
            raise self._failure(code, stderr, "reading", self._key)

    def close(self) -> None:
        if not self._done:
            # Closed before EOF (e.g. only the header was read): stop the transfer, it is not an error.
            self._done = True
            with contextlib.suppress(OSError):
                self._proc.kill()
            self._proc.wait()
            self._err.close()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        super().close()

"""TLS for every listener (worker HTTP and gRPC, the supervisor's metrics and management):
the server's certificate and key, and with a client CA, mutual TLS (a client certificate
signed by that CA is required). Also the client context of remote downloads
(``--url-ca-bundle``), so that the start can check it.

The files are reloaded when they change, without a restart: each new handshake asks
``ReloadingTLS.current()``, which looks at the files' stat at most once a second and, when
they changed, builds a whole new ``ssl.SSLContext`` from them. HTTP listeners hand the
handshake to it through the server context's SNI callback, which OpenSSL calls for every
ClientHello (with or without a server name) and which may switch the connection to another
context; gRPC asks for the PEM bytes through its certificate fetcher. Nothing is changed in
place, so a context never holds a new certificate with an old key, and a client CA that is
removed from the file stops being trusted (``load_verify_locations`` on a live context could
only add CAs). Files caught half written (a certificate and key that do not match, a PEM cut
short) keep the old material, log a warning (once per state of the files, from each
listener of each process: each has its own ``ReloadingTLS``), and are tried again on the
next change. Sessions are never resumed: a resumed session would skip the client's
certificate, past a CA removed from the file.

Only the standard library: the supervisor imports this too.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from torchferry.errors import TorchferryError

log = logging.getLogger("torchferry.tls")

#: How often, at most, a handshake looks at the files' stat.
CHECK_EVERY_S = 1.0


class TLSConfigError(TorchferryError):
    """The TLS options or files cannot serve: a certificate without its key, an unreadable
    file, a key that does not match the certificate."""


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path
    #: Clients must present a certificate signed by a CA in this file (mutual TLS).
    client_ca: Path | None = None

    @classmethod
    def from_options(
        cls, cert: Path | None, key: Path | None, client_ca: Path | None
    ) -> TLSFiles | None:
        """The files to serve with, None for plain HTTP; options that only make sense
        together are refused here, naming the missing one."""
        if cert is None and key is None:
            if client_ca is not None:
                raise TLSConfigError("--tls-client-ca needs --tls-cert and --tls-key")
            return None
        if cert is None:
            raise TLSConfigError("--tls-key needs --tls-cert (the server's certificate chain)")
        if key is None:
            raise TLSConfigError("--tls-cert needs --tls-key (the certificate's private key)")
        return cls(cert, key, client_ca)

    def paths(self) -> list[Path]:
        return [p for p in (self.cert, self.key, self.client_ca) if p is not None]


@dataclass(frozen=True)
class TLSMaterial:
    """One consistent load of the files: their PEM bytes and the context built from them."""

    cert_chain: bytes
    key: bytes
    client_ca: bytes | None
    context: ssl.SSLContext


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def _new_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # HTTP/1.1 and gRPC's HTTP/2 each have their own listener; no renegotiation, no
    # compression (PROTOCOL_TLS_SERVER's defaults already refuse both)
    # No session resumption: a resumed session skips the client's certificate, and the
    # listener's front context keeps the tickets' keys and the session cache through every
    # reload, so a client whose CA was removed from the file could resume its way back in.
    # No tickets (TLS 1.2 and 1.3); the session-ID cache OpenSSL could fall back to for
    # TLS 1.2 resumes nothing either (test_tls.py tries both versions). The cost: every
    # connection makes a full handshake.
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    return context


def _check_certificates(pem: bytes, path: Path, what: str) -> None:
    """Refuse a file that holds no PEM certificate, naming it (OpenSSL's own message for
    a bad chain does not say which file it read)."""
    try:
        _new_context().load_verify_locations(cadata=pem.decode("ascii", errors="replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise TLSConfigError(f"the {what} {path} holds no valid PEM certificate: {exc}") from None


def download_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """The client context remote downloads verify servers with: the system's CAs plus
    ``--url-ca-bundle``; TLSConfigError naming the file when it cannot be read or holds no
    CA certificate (checked at start, and again by each download)."""
    context = ssl.create_default_context()
    if ca_bundle is None:
        return context
    try:
        context.load_verify_locations(cafile=str(ca_bundle))
    except OSError as exc:
        if not isinstance(exc, ssl.SSLError):
            raise TLSConfigError(
                f"--url-ca-bundle {ca_bundle}: cannot read it: {exc.strerror or exc}"
            ) from None
        raise TLSConfigError(
            f"--url-ca-bundle {ca_bundle} holds no valid PEM CA certificate: {exc}"
        ) from None
    return context


def load_material(files: TLSFiles) -> TLSMaterial:
    """Read the files once and build a context from exactly those bytes: a file rewritten
    between two reads cannot pair one version's certificate with another's key."""
    cert = _read(files.cert, "certificate file")
    key = _read(files.key, "private key file")
    client_ca = _read(files.client_ca, "client CA file") if files.client_ca else None
    _check_certificates(cert, files.cert, "certificate file")
    if client_ca is not None:
        assert files.client_ca is not None
        _check_certificates(client_ca, files.client_ca, "client CA file")
    return TLSMaterial(cert, key, client_ca, build_context(cert, key, client_ca, files))


def build_context(
    cert: bytes, key: bytes, client_ca: bytes | None, files: TLSFiles
) -> ssl.SSLContext:
    """A server context from PEM bytes (through a private temporary folder, since
    ``load_cert_chain`` only reads paths); errors name the files the bytes came from."""
    context = _new_context()
    with tempfile.TemporaryDirectory(prefix="torchferry-tls-") as folder:  # mode 0700
        cert_copy, key_copy = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert_copy.write_bytes(cert)
        descriptor = os.open(key_copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(key)
        try:
            context.load_cert_chain(cert_copy, key_copy)
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc):
                raise TLSConfigError(
                    f"the private key {files.key} does not match the certificate {files.cert}"
                ) from None
            raise TLSConfigError(
                f"cannot use the private key {files.key} with the certificate {files.cert}: "
                f"{exc.reason or exc} (an unencrypted PEM key is expected)"
            ) from None
    if client_ca is not None:
        context.load_verify_locations(cadata=client_ca.decode("ascii", errors="replace"))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _signature(files: TLSFiles) -> tuple[tuple[int, int, int], ...]:
    """What tells a changed file: its inode (a file replaced by rename), size and mtime."""
    marks = []
    for path in files.paths():
        try:
            stat = path.stat()
        except OSError:
            marks.append((-1, -1, -1))
        else:
            marks.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(marks)


class ReloadingTLS:
    """The TLS material of one process, reloaded when its files change; safe to ask from
    gRPC's threads and the event loop at once."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self._signature = _signature(files)
        self._material = load_material(files)  # a bad file fails the start, named
        #: Counts the reloads, for the log (gRPC's fetcher compares the material itself).
        self.generation = 0
        self._checked_at = time.monotonic()
        self._refused: tuple[tuple[int, int, int], ...] | None = None
        self._lock = threading.Lock()

    @property
    def mutual(self) -> bool:
        return self.files.client_ca is not None

    def current(self) -> TLSMaterial:
        """The material to handshake with: reloaded first if the files changed (looked at
        no more than once a second)."""
        now = time.monotonic()
        if now - self._checked_at >= CHECK_EVERY_S:
            with self._lock:
                if now - self._checked_at >= CHECK_EVERY_S:
                    self._checked_at = now
                    self._reload_if_changed()
        return self._material

    def _reload_if_changed(self) -> None:
        signature = _signature(self.files)
        if signature == self._signature:
            return
        try:
            material = load_material(self.files)
        except TLSConfigError as exc:
            if signature != self._refused:  # one warning per state of the files
                self._refused = signature
                log.warning(
                    "TLS files changed but cannot be used yet; serving the previous ones: %s",
                    exc.message,
                    extra={"event": "tls_reload_failed"},
                )
            return
        self._material, self._signature, self._refused = material, signature, None
        self.generation += 1
        log.info(
            "TLS certificate reloaded from %s",
            self.files.cert,
            extra={"event": "tls_reloaded", "generation": self.generation},
        )

    def server_context(self) -> ssl.SSLContext:
        """A context for ``create_server``: each handshake switches to the current
        material's context (a fresh one after a reload)."""
        material = self._material
        front = build_context(material.cert_chain, material.key, material.client_ca, self.files)

        def switch(
            connection: ssl.SSLSocket | ssl.SSLObject, server_name: str | None, _: ssl.SSLContext
        ) -> None:
            try:
                connection.context = self.current().context
            except Exception:  # never fail a handshake over a reload: keep this context
                log.exception("TLS reload failed")

        front.sni_callback = switch
        return front

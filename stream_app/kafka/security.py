"""Kafka TLS / SASL: the one place that turns Settings into what Kafka clients need.

Every aiokafka client of the app (consumers, producers, admin, the metadata probe) gets
``**client_kwargs(settings)``; the Faust app gets ``broker_credentials=faust_credentials(settings)``,
which faust's aiokafka driver turns back into the same keyword arguments
(``faust.transport.drivers.aiokafka.credentials_to_aiokafka_auth``; a unit test checks both agree).

Which combinations are allowed is checked by :class:`stream_app.settings.Settings` itself; here the
files are read (CA, client certificate and key, password file) and a bad one is a ``ValueError``
naming the variable. The SASL password is never part of a ``repr`` or of :meth:`KafkaSecurity.describe`
(what the worker logs).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

    from stream_app.settings import Settings


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """Resolved security of the Kafka connection: protocol, TLS context, SASL identity."""

    protocol: str = "PLAINTEXT"
    ssl_context: ssl.SSLContext | None = None
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca: str = ""  # for describe(): where the trusted CAs come from
    mutual_tls: bool = False

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client (AIOKafkaConsumer/Producer/AdminClient/Client)."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.ssl_context is not None:
            kwargs["ssl_context"] = self.ssl_context
        if self.sasl_mechanism is not None:
            kwargs.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                          sasl_plain_password=self.password)
        return kwargs

    def faust_credentials(self) -> CredentialsT | None:
        """``faust.App(broker_credentials=...)``: None for PLAINTEXT (faust's default)."""
        import faust

        if self.sasl_mechanism is not None:
            return faust.SASLCredentials(username=self.username, password=self.password,
                                         ssl_context=self.ssl_context, mechanism=self.sasl_mechanism)
        if self.ssl_context is not None:
            return faust.SSLCredentials(self.ssl_context)
        return None

    def describe(self) -> dict[str, Any]:
        """What may be logged: no password, no key material."""
        info: dict[str, Any] = {"security_protocol": self.protocol}
        if self.ssl_context is not None:
            info.update(tls_ca=self.ca or "system", mutual_tls=self.mutual_tls)
        if self.sasl_mechanism is not None:
            info.update(sasl_mechanism=self.sasl_mechanism, sasl_username=self.username)
        return info


def kafka_security(settings: Settings) -> KafkaSecurity:
    """Read the files the settings name and build the TLS context; ``ValueError`` names a bad file."""
    protocol = settings.kafka_security_protocol
    context = None
    if protocol in {"SSL", "SASL_SSL"}:
        context = _ssl_context(settings)
    if not protocol.startswith("SASL_"):
        return KafkaSecurity(protocol, context, ca=settings.kafka_ssl_cafile,
                             mutual_tls=bool(settings.kafka_ssl_certfile))
    password = settings.kafka_sasl_password
    if settings.kafka_sasl_password_file:
        password = read_secret_file(settings.kafka_sasl_password_file, "KAFKA_SASL_PASSWORD_FILE")
    return KafkaSecurity(protocol, context, settings.kafka_sasl_mechanism, settings.kafka_sasl_username, password,
                         ca=settings.kafka_ssl_cafile, mutual_tls=bool(settings.kafka_ssl_certfile))


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """``**client_kwargs(settings)`` for every aiokafka client the app builds."""
    return kafka_security(settings).client_kwargs()


def faust_credentials(settings: Settings) -> CredentialsT | None:
    return kafka_security(settings).faust_credentials()


def read_secret_file(path: str, variable: str) -> str:
    """A secret from a file (a mounted Kubernetes Secret, a Docker secret): trailing newlines dropped.
    The error names the variable and the path, never the content."""
    try:
        secret = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{variable}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not secret:
        raise ValueError(f"{variable}: {path} is empty")
    return secret


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    from aiokafka.helpers import create_ssl_context

    for variable, path in (("KAFKA_SSL_CAFILE", settings.kafka_ssl_cafile),
                           ("KAFKA_SSL_CERTFILE", settings.kafka_ssl_certfile),
                           ("KAFKA_SSL_KEYFILE", settings.kafka_ssl_keyfile)):
        if path and not Path(path).is_file():
            raise ValueError(f"{variable}: no such file {path}")
    try:
        # Hostname verification stays on (create_default_context): the broker's certificate must
        # name the host in KAFKA_BOOTSTRAP_SERVERS / the advertised listeners.
        return create_ssl_context(cafile=settings.kafka_ssl_cafile or None,
                                  certfile=settings.kafka_ssl_certfile or None,
                                  keyfile=settings.kafka_ssl_keyfile or None)
    except ssl.SSLError as exc:
        raise ValueError(f"KAFKA_SSL_CAFILE/CERTFILE/KEYFILE: not usable PEM: {exc.reason or exc}") from None

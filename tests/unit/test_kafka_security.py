"""Kafka TLS/SASL settings: parsed from the environment, bad combinations refused with the variable
named, one set of client arguments for aiokafka and Faust alike, and the password never shown."""

from __future__ import annotations

import ast
import asyncio
import logging
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from stream_app.kafka.security import client_kwargs, faust_credentials, kafka_security
from stream_app.settings import Settings

PASSWORD = "pw-7f3a9c-do-not-log"
SASL = {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "stream-app", "KAFKA_SASL_PASSWORD": PASSWORD}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throw-away CA and a client certificate signed by it (openssl, made per test run)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=stream-app-test-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
            "-subj", "/CN=stream-app")
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "client.pem", "-days", "2")
    return {"ca": d / "ca.pem", "cert": d / "client.pem", "key": d / "client.key"}


def test_reads_the_security_settings_from_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    s = Settings.from_env({**SASL, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_PASSWORD": "",
                           "KAFKA_SASL_PASSWORD_FILE": str(secret), "KAFKA_SSL_CAFILE": "/etc/ca.pem"})
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism, s.kafka_sasl_username, s.kafka_ssl_cafile,
            s.kafka_sasl_password_file) == ("SASL_SSL", "SCRAM-SHA-512", "stream-app", "/etc/ca.pem", str(secret))
    assert Settings.from_env({}).kafka_security_protocol == "PLAINTEXT"


@pytest.mark.parametrize(("env", "names"), [
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
    ({"KAFKA_SSL_CAFILE": "/ca.pem"}, "KAFKA_SSL_CAFILE"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "/c.pem"}, "KAFKA_SSL_KEYFILE"),
    ({"KAFKA_SASL_USERNAME": "u"}, "KAFKA_SASL_USERNAME"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SASL_MECHANISM": "PLAIN"}, "KAFKA_SASL_MECHANISM"),
    ({**SASL, "KAFKA_SASL_MECHANISM": ""}, "KAFKA_SASL_MECHANISM"),
    ({**SASL, "KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
    ({**SASL, "KAFKA_SASL_USERNAME": ""}, "KAFKA_SASL_USERNAME"),
    ({**SASL, "KAFKA_SASL_PASSWORD": ""}, "KAFKA_SASL_PASSWORD_FILE"),
    ({**SASL, "KAFKA_SASL_PASSWORD_FILE": "/run/secrets/pw"}, "KAFKA_SASL_PASSWORD_FILE"),
    ({"STREAM_APP_HTTP_TOKEN": "t", "STREAM_APP_HTTP_TOKEN_FILE": "/t"}, "STREAM_APP_HTTP_TOKEN_FILE"),
])
def test_combinations_that_cannot_work_are_clear_errors(env: dict[str, str], names: str) -> None:
    with pytest.raises(ValueError) as info:
        Settings.from_env(env)
    assert names in str(info.value) and PASSWORD not in str(info.value)


def test_plaintext_is_the_default() -> None:
    assert client_kwargs(Settings()) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(Settings()) is None


def test_sasl_plaintext_with_a_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\r\n")
    s = Settings.from_env({**SASL, "KAFKA_SASL_PASSWORD": "", "KAFKA_SASL_PASSWORD_FILE": str(secret)})
    assert client_kwargs(s) == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                                "sasl_plain_username": "stream-app", "sasl_plain_password": PASSWORD}


def test_mutual_tls_context_verifies_the_broker(pki: dict[str, Path]) -> None:
    s = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=str(pki["ca"]), kafka_ssl_certfile=str(pki["cert"]),
                 kafka_ssl_keyfile=str(pki["key"]))
    kwargs = client_kwargs(s)
    assert set(kwargs) == {"security_protocol", "ssl_context"} and kwargs["security_protocol"] == "SSL"
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "stream-app-test-ca"),),)]


def test_sasl_ssl_with_system_cas() -> None:
    s = Settings.from_env({**SASL, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN"})
    kwargs = client_kwargs(s)
    assert kwargs["security_protocol"] == "SASL_SSL" and isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert (kwargs["sasl_mechanism"], kwargs["sasl_plain_password"]) == ("PLAIN", PASSWORD)


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_faust_gets_the_same_client_arguments(protocol: str, mechanism: str) -> None:
    """Faust's driver turns broker_credentials into aiokafka arguments; they must equal ours."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    env = {**SASL, "KAFKA_SECURITY_PROTOCOL": protocol, "KAFKA_SASL_MECHANISM": mechanism}
    if not protocol.startswith("SASL_"):
        env = {"KAFKA_SECURITY_PROTOCOL": protocol}
    security = kafka_security(Settings.from_env(env))
    faust_kwargs = dict(credentials_to_aiokafka_auth(security.faust_credentials()))
    ours = security.client_kwargs()
    if protocol == "SASL_PLAINTEXT":  # faust always names ssl_context for SASL; None is aiokafka's default
        assert faust_kwargs.pop("ssl_context") is None
    assert faust_kwargs == ours


@pytest.mark.parametrize(("variable", "env_extra", "message"), [
    ("KAFKA_SSL_CAFILE", {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/no/such/ca.pem"}, "no such file"),
    ("KAFKA_SASL_PASSWORD_FILE", {**SASL, "KAFKA_SASL_PASSWORD": "", "KAFKA_SASL_PASSWORD_FILE": "/no/such/pw"},
     "cannot read"),
])
def test_unreadable_files_name_the_variable(variable: str, env_extra: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=f"{variable}.*{message}"):
        kafka_security(Settings.from_env(env_extra))


def test_bad_pem_and_empty_password_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    with pytest.raises(ValueError, match="not usable PEM"):
        kafka_security(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=str(tmp_path / "ca.pem")))
    (tmp_path / "pw").write_text("\n")
    with pytest.raises(ValueError, match="KAFKA_SASL_PASSWORD_FILE.*empty"):
        kafka_security(Settings.from_env({**SASL, "KAFKA_SASL_PASSWORD": "",
                                          "KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "pw")}))


def test_password_never_in_repr_or_description() -> None:
    s = Settings.from_env({**SASL, "STREAM_APP_HTTP_TOKEN": "tok-123-secret", "STREAM_APP_CHECKPOINT_KEY": "ck-456"})
    security = kafka_security(s)
    shown = " ".join([repr(s), str(s), repr(security), str(security.describe()), repr(security.faust_credentials())])
    for secret in (PASSWORD, "tok-123-secret", "ck-456"):
        assert secret not in shown
    assert security.describe() == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                                   "sasl_username": "stream-app"}


def test_password_not_in_client_logs_when_the_broker_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    from aiokafka import AIOKafkaClient

    async def attempt() -> None:
        client = AIOKafkaClient(bootstrap_servers="127.0.0.1:1", request_timeout_ms=500,
                                **client_kwargs(Settings.from_env(SASL)))
        try:
            await asyncio.wait_for(client.bootstrap(), 5)
        except Exception as exc:  # refused connection: what matters is what was logged
            logging.getLogger("test").error("bootstrap failed: %r", exc)
        finally:
            await client.close()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(attempt())
    assert caplog.records and PASSWORD not in caplog.text


def test_every_kafka_client_gets_the_security_arguments() -> None:
    """One code path: each aiokafka client built in stream_app passes ``**<security kwargs>``.

    The embedded broker's own readiness probe (devtools/broker.py) is the exception: it talks plaintext
    to the loopback Tansu it started."""
    root = Path(__file__).parents[2] / "stream_app"
    clients = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient", "AIOKafkaClient"}
    missing, seen = [], 0
    for path in root.rglob("*.py"):
        if path.name == "broker.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in clients:
                seen += 1
                if not any(k.arg is None for k in node.keywords):
                    missing.append(f"{path.relative_to(root)}:{node.lineno}")
    assert seen >= 6 and not missing

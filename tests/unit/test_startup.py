"""Start-up checks: each mistake becomes one StartupError that names the setting and the fix, in bounded time."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_app.kafka.preflight import check_broker
from stream_app.models.onnx_model import card_path, load_configured, packaged_model_path, sha256_file
from stream_app.startup import StartupError, check_web_port


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback port some other process already listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s


def test_taken_web_port_names_the_port_and_the_setting(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with pytest.raises(StartupError, match=rf"port {port} on 127\.0\.0\.1 is already in use.*STREAM_APP_WEB_PORT"):
        check_web_port("127.0.0.1", port)


def test_free_port_and_port_zero_pass() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    check_web_port("127.0.0.1", port)
    check_web_port("127.0.0.1", 0)


def test_address_not_of_this_machine_names_the_host_setting() -> None:
    with pytest.raises(StartupError, match="STREAM_APP_WEB_HOST=192.0.2.1"):
        check_web_port("192.0.2.1", 6066)  # TEST-NET-1: never a local address


def test_refused_broker_is_one_line_naming_the_address(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there any more: connection refused
    started = time.monotonic()
    with pytest.raises(StartupError) as caught:
        check_broker(f"127.0.0.1:{port}", {})
    message = str(caught.value)
    assert f"127.0.0.1:{port} (KAFKA_BOOTSTRAP_SERVERS)" in message and "\n" not in message
    assert caught.value.exit_code == 1
    assert time.monotonic() - started < 10


def test_silent_broker_is_given_up_on_within_the_bound(listener: socket.socket) -> None:
    """A listener that accepts connections but never answers (a wrong port, a firewall) must not hang."""
    started = time.monotonic()
    with pytest.raises(StartupError, match="no answer within 1 s"):
        check_broker(f"127.0.0.1:{listener.getsockname()[1]}", {}, timeout_s=1.0)
    assert time.monotonic() - started < 5


def _model_copy(directory: Path) -> Path:
    model = directory / "model.onnx"
    shutil.copy(packaged_model_path(), model)
    shutil.copy(card_path(packaged_model_path()), card_path(model))
    return model


@pytest.mark.parametrize("problem", ["missing", "directory", "no_card", "not_onnx"])
def test_unusable_model_file_names_the_setting_and_the_path(tmp_path: Path, problem: str) -> None:
    model = _model_copy(tmp_path)
    if problem == "missing":
        model = tmp_path / "nowhere.onnx"
    elif problem == "directory":
        model = tmp_path
    elif problem == "no_card":
        card_path(model).unlink()
    else:  # a file that is not ONNX, with a card that matches its bytes: only onnxruntime can tell
        model.write_bytes(b"this is not a model")
        card = json.loads(card_path(model).read_text())
        card_path(model).write_text(json.dumps({**card, "sha256": sha256_file(model)}))
    with pytest.raises(StartupError) as caught:
        load_configured(str(model), "STREAM_APP_ONNX_MODEL")
    message = str(caught.value)
    assert message.startswith(f"STREAM_APP_ONNX_MODEL: {model}: "), message
    assert "\n" not in message


def test_good_model_and_the_packaged_default_load(tmp_path: Path) -> None:
    assert load_configured(str(_model_copy(tmp_path)), "STREAM_APP_ONNX_MODEL").version
    assert load_configured("", "STREAM_APP_ONNX_MODEL").version

"""The pure parts of `stream-app worker --processes N`: each child's port and data directory, and when an
exited child is started again (the processes themselves: tests/integration/test_processes.py)."""

from __future__ import annotations

from stream_app.settings import Settings
from stream_app.worker.supervisor import BACKOFF_MAX_S, EXIT_CONFIG, STABLE_AFTER_S, Restarts, child_env, web_ports


def test_each_child_has_its_own_port_and_data_directory() -> None:
    s = Settings.from_env({"STREAM_APP_WEB_PORT": "7000", "STREAM_APP_DATA_DIR": "/var/lib/sa"})
    envs = [child_env(s, i, {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "STREAM_APP_WEB_PORT": "7000"}) for i in range(3)]
    assert [e["STREAM_APP_WEB_PORT"] for e in envs] == ["7000", "7001", "7002"]
    assert [e["STREAM_APP_DATA_DIR"] for e in envs] == ["/var/lib/sa/worker-0", "/var/lib/sa/worker-1",
                                                        "/var/lib/sa/worker-2"]
    assert all(e["KAFKA_BOOTSTRAP_SERVERS"] == "k:9092" for e in envs)


def test_port_zero_lets_every_child_pick_a_free_port() -> None:
    assert web_ports(Settings.from_env({"STREAM_APP_WEB_PORT": "0"}), 3) == [0, 0, 0]


def test_restarts_back_off_and_a_configuration_error_stops_everything() -> None:
    r = Restarts()
    r.started(0.0)
    delays = []
    for now in range(1, 8):
        delays.append(r.after_exit(1, float(now)))
        r.started(float(now))
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, BACKOFF_MAX_S, BACKOFF_MAX_S]
    r.started(100.0)
    assert r.after_exit(70, 100.0 + STABLE_AFTER_S) == 1.0  # a minute of running resets the back-off
    assert r.after_exit(EXIT_CONFIG, 1000.0) is None

from __future__ import annotations

import pytest

from stream_app.settings import Settings


def test_reads_typed_values_from_the_environment() -> None:
    s = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "STREAM_APP_PARTITIONS": "8",
                           "STREAM_APP_REVIEW_THRESHOLD": "0.3", "STREAM_APP_FETCH_VERIFIED_OFFSETS": "false"})
    assert (s.bootstrap_servers, s.partitions, s.review_threshold, s.fetch_verified_offsets) == (
        "k:9092", 8, 0.3, False)


@pytest.mark.parametrize("env", [{"STREAM_APP_PARTITIONS": "many"}, {"STREAM_APP_REVIEW_THRESHOLD": "0.9"},
                                 {"STREAM_APP_FETCH_VERIFIED_OFFSETS": "maybe"}])
def test_bad_values_are_clear_errors(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Settings.from_env(env)

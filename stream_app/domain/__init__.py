"""The pure core: events, features, scoring, decisions and records; no Kafka or faust import
(tests/unit/test_layers.py enforces it)."""

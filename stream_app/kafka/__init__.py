"""Kafka infrastructure adapters: embedded broker, topic creation, Faust transport."""

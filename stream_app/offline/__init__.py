"""Offline tools over the same core: batch scoring, training, evaluation."""

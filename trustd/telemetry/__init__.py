"""Metrics, logs and health: every metric trustd exports is declared in metrics.py."""

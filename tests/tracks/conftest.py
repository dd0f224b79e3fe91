"""Fixtures for the tracks tests (helpers live in tracks_testing.py)."""

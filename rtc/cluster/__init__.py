"""Cluster mode: several `rtc serve` nodes sharing rooms through Redis.

Each room's roster, limits and log live in Redis (one hash slot per room); documents and
events live in the shared PostgreSQL store. Without `--cluster` nothing here is imported.
"""

"""Optuna storages (SQLite default, PostgreSQL), heartbeat settings and artifact stores."""

from optuna_search.storage._storages import artifact_store, check_storage_url, make_storage, redact_url

__all__ = ["artifact_store", "check_storage_url", "make_storage", "redact_url"]

"""Optuna storages (SQLite default, PostgreSQL), claim lock, checkpoint folders,
artifacts and study bundles. Imports nothing from search/ or objectives/."""

from optuna_search.storage._artifacts import artifact_store, read_records, upload_records
from optuna_search.storage._bundle import StudyLocation, export_bundle, import_bundle
from optuna_search.storage._claim import ClaimLock
from optuna_search.storage._storages import check_storage_url, list_study_names, open_storage, redact_url

__all__ = [
    "ClaimLock", "StudyLocation", "artifact_store", "check_storage_url", "export_bundle", "import_bundle",
    "list_study_names", "open_storage", "read_records", "redact_url", "upload_records",
]

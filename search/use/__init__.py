"""Using what a study found: `predict` and the Predictor, `export-model`, ensembles, and
study bundles (`export`, `--resume-from`)."""

from optuna_search.search.use._bundles import export_study_bundle, import_study_bundle
from optuna_search.search.use._ensembles import run_ensemble
from optuna_search.search.use._export_model import export_model
from optuna_search.search.use._predict import (
    BAD_ROW_POLICIES,
    SPEC_FILE,
    ModelSpec,
    Predictor,
    RowPrediction,
    chosen_trial,
    predict_file,
    spec_from_study,
)
from optuna_search.search.use._wheelhouse import make_wheelhouse

__all__ = [
    "BAD_ROW_POLICIES",
    "SPEC_FILE",
    "ModelSpec",
    "Predictor",
    "RowPrediction",
    "chosen_trial",
    "export_model",
    "export_study_bundle",
    "import_study_bundle",
    "make_wheelhouse",
    "predict_file",
    "run_ensemble",
    "spec_from_study",
]

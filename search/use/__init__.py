"""Using what a study found: `predict` and the Predictor, `export-model`, ensembles, and
study bundles (`export`, `--resume-from`)."""

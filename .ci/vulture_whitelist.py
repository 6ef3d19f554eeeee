"""Names `vulture` finds unused in the product code that are used, reviewed one by one
(.ci/deadcode): each is read by a library or by name, where vulture cannot see it. A new
dead definition is not added here: it is removed."""

# ruff: noqa: B018, F821
# The trial record's fields, written and read by name (core/_record.py: _PLAIN).
eval_method
validation_accuracy_curve
orphaned
tracking
# http.server's hooks (dashboards/_launch.py).
daemon_threads
_.log_message
# Attributes the tokenizers and transformers libraries read (objectives/_demo.py, _model.py).
_.pre_tokenizer
_.decoder
_.add_bos_token
_.pad_token
_.support_avx512bf16_for_cpu
# transformers' TrainerCallback hooks and control flags, and Trainer's own attributes
# (objectives/_trainer.py).
_._created_lr_scheduler
_.should_training_stop
_.should_save
_.should_evaluate
_.on_train_begin
_.on_save
_.on_log
_.on_step_end
_.logging_dir
# A module's lazy attribute (search/setup/__init__.py) and Optuna's sampler API.
__getattr__
_.reseed_rng
# The simulated Hub answers as huggingface_hub does: its fields and keyword arguments are
# the library's (storage/testing.py).
blob_id
xet_hash
uploaded_at
commit_url
repo_type
recursive

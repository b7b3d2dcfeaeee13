"""The training pipeline (KFP v2): run locally, compile, submit."""

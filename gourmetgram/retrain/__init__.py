"""Re-training triggers: when to re-train (schedule, drift alert, degradation) and the guard
rails that keep it sane (minimum new labels, cool-down, one run at a time).

Core library: a pure policy (:mod:`.policy`), its config (:mod:`.settings`), the run lock
(:mod:`.lock`), the run history (:mod:`.history`) and the Alertmanager payload parser
(:mod:`.alerts`). What starts runs (kfp.local, kfp.Client) and the HTTP receiver live in the
app layer (:mod:`gourmetgram_app.local.retrain`).
"""

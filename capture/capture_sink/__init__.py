"""The capture sink: the inference logger's second consumer (next to the drift detector).

CloudEvents in (through the broker's trigger), images to the object store and predictions
to the metadata database, sampled per stage; the user feedback API; loop metrics.
"""

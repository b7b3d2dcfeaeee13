"""The logger's CloudEvents decoder lives in the core (:mod:`gourmetgram.inference_events`):
the drift detector and the capture sink both consume the same events."""

from gourmetgram.inference_events import (  # noqa: F401  (re-exported)
    EVENT_TYPES,
    EXTENSIONS,
    MAX_INSTANCES,
    REQUEST_TYPE,
    RESPONSE_TYPE,
    BadEvent,
    InferenceEvent,
    decode_event,
)

"""GourmetGram core: what every deployment unit shares.

Preprocessing, class names, the model definition, configuration, the dataset layout,
the local runtime and the command line live here, defined once and imported by the
pipeline components, the transformer, the drift detector and the tests.
"""

__version__ = "0.1.0"

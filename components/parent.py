"""Step 1b: continual training's parent, resolved before training (never cached).

The retrain starts from the model the registry's ``production`` alias points at now
(``init_from`` production, :mod:`gourmetgram.continual`), or from scratch. Resolving it in its
own uncached step makes the version an input of ``train``, so the training cache is keyed on it:
an unchanged dataset + config + parent reuses the checkpoint, a new production model retrains.
"""

from components.base import component


@component
def parent_model(config: str, init_from: str, registered_model_name: str) -> str:
    """The registered version to fine-tune (``init_from`` production, or empty: the config's
    ``train.init_from``), or an empty string: from scratch (``scratch``, or no production model yet)."""
    from components.steps import parent_step, user_errors

    with user_errors():
        return parent_step(config, init_from, registered_model_name)

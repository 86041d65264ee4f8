"""What a run is conditioned on: the condition-kind registry (``registry``), the built-in kinds (``kinds``:
label, caption, layout, embedding; ``images``: image, masked_image) and their tokenizers (``tokenizers``).

    kind = conditioning.kind_of(config)        # config.condition.kind; None for unconditional runs
    arrays = kind.encode(kind.read(config, "train"), ctx, source="train captions")
"""

from sde_lib.conditioning import images, kinds  # noqa: F401  (register the built-in kinds)
from sde_lib.conditioning.registry import (
    NETWORK_INPUTS,
    ConditionKind,
    Context,
    available,
    by_user_arg,
    get,
    kind_of,
    registered,
    load_plugin,
    register,
    unregister,
)

__all__ = ["NETWORK_INPUTS", "ConditionKind", "Context", "available", "by_user_arg", "get", "kind_of", "load_plugin",
           "register", "registered", "unregister"]

"""vla-spec: an executable specification of OpenVLA-style vision-language-action policies.

The spine, module by module: LIBERO frame -> model image (:mod:`vla_spec.images`) -> the model's
inputs (:mod:`vla_spec.model.processor`) -> model -> 7 token ids (:mod:`vla_spec.tokens`) ->
normalized action -> un-normalized action (:mod:`vla_spec.normalization`) -> gripper convention
(:mod:`vla_spec.gripper`) -> ``env.step``. What goes into the model is
:mod:`vla_spec.model.processor`; what comes out, the whole way to the environment command, is
:mod:`vla_spec.actions`.
"""

from vla_spec.normalization import (
    NormStats,
    UnnormKeyError,
    load_norm_stats,
    normalize,
    resolve_unnorm_key,
    shipped_norm_stats,
    unnormalize,
)
from vla_spec.tokens import ActionTokenizer

__version__ = "0.1.0"

__all__ = [
    "ActionTokenizer",
    "NormStats",
    "UnnormKeyError",
    "load_norm_stats",
    "normalize",
    "resolve_unnorm_key",
    "shipped_norm_stats",
    "unnormalize",
    "__version__",
]

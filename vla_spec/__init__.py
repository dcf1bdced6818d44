"""vla-spec: an executable specification of OpenVLA-style vision-language-action policies.

The spine, module by module: image -> model -> 7 token ids (:mod:`vla_spec.tokens`) -> normalized
action -> un-normalized action (:mod:`vla_spec.normalization`) -> gripper convention
(:mod:`vla_spec.gripper`) -> ``env.step``.
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

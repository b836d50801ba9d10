"""mechattr: input attribution for TransformerLens models.

>>> import mechattr as ma
>>> model = ma.load_model()                       # built-in offline model
>>> res = ma.attribute(model, "The capital of France is", target=" Paris", method="ig")
>>> res.scores, res.tokens, res.diagnostics["completeness_error"]
"""

from .tl.adapter import ModelAdapter, as_adapter
from .api import attribute, resolve, run_method
from .attribution import Attribution
from .dataset import DatasetRun, attribute_dataset, load_dataset_results
from .display import compare
from .errors import (
    ConfigWarning,
    FastPathWarning,
    HookError,
    InputError,
    MechattrError,
    MechattrWarning,
    UnknownTokenWarning,
    MethodError,
    ModelError,
    ResultFileError,
    TargetError,
)
from .tl.loading import DEFAULT_MODEL, builtin_models, cache_dir, load_model
from .contract import Context, MethodInfo, MethodOutput, register
from .registry import get_method, list_methods
from .validation import ValidationReport, validate
from .report import report
from .sensitivity import BaselineSensitivity, baseline_sensitivity
from .explain import Explanation, explain
from . import circuits, groundtruth, linking, plots
from .linking import LinearProbe, SAEFeature, head_attribution, token_feature_map, token_head_map
from .targets import (
    Contrast,
    ForcedContinuation,
    FunctionTarget,
    Generate,
    NextToken,
    Target,
)

__version__ = "0.1.0"

__all__ = [
    "attribute",
    "attribute_dataset",
    "load_dataset_results",
    "DatasetRun",
    "validate",
    "report",
    "baseline_sensitivity",
    "BaselineSensitivity",
    "explain",
    "Explanation",
    "plots",
    "linking",
    "circuits",
    "groundtruth",
    "LinearProbe",
    "SAEFeature",
    "token_head_map",
    "token_feature_map",
    "head_attribution",
    "ValidationReport",
    "resolve",
    "run_method",
    "load_model",
    "builtin_models",
    "cache_dir",
    "DEFAULT_MODEL",
    "Attribution",
    "ModelAdapter",
    "as_adapter",
    "compare",
    "list_methods",
    "get_method",
    "register",
    "Context",
    "MethodOutput",
    "MethodInfo",
    "Target",
    "NextToken",
    "Contrast",
    "ForcedContinuation",
    "Generate",
    "FunctionTarget",
    "MechattrError",
    "InputError",
    "TargetError",
    "MethodError",
    "ModelError",
    "HookError",
    "ResultFileError",
    "MechattrWarning",
    "FastPathWarning",
    "ConfigWarning",
    "UnknownTokenWarning",
]

"""Linking token attributions to heads, probes and SAE features."""

from .heads import token_head_map
from .patching import PatchingResult, head_attribution, tl_attribution_patching_available
from .probes import LinearProbe
from .relevance import Relevance, lrp_relevance
from .sae import SAEFeature, feature_direct_effects, token_feature_map
from .display import feature_view, head_view, linking_page, probe_view

__all__ = [
    "token_head_map",
    "head_attribution",
    "PatchingResult",
    "tl_attribution_patching_available",
    "LinearProbe",
    "lrp_relevance",
    "Relevance",
    "SAEFeature",
    "token_feature_map",
    "feature_direct_effects",
    "head_view",
    "feature_view",
    "probe_view",
    "linking_page",
]

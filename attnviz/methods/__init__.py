"""Explanation methods. Importing this package registers every method."""
from . import attention, captioning, gradcam, gradients, perturbation, relevance, rollout, text  # noqa: F401  (registration)
from . import channel_attention, spatial_attention  # noqa: F401  (registration)
from . import cam_variants, clip_similarity, legrad, noise_tunnel  # noqa: F401  (registration)
from . import vlm  # noqa: F401  (registration)
from .registry import METHODS, MethodSpec, Param, explain, get_method, list_methods  # noqa: F401

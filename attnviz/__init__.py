"""attnviz: see where a vision transformer looks.

>>> import attnviz
>>> model = attnviz.load_model("demo-vit-shapes")
>>> cap = attnviz.capture(model, image)            # one forward feeds every attention view
>>> exp = attnviz.explain(model, cap, "relevance", target="circle")
>>> exp.map.shape                                   # [rows, cols] over the patch grid
"""
from .api import capture, explain, list_methods, load_model
from .errors import AttnvizError, ModelUnavailable, UsageError
from .images import ImageRejected, load_image, load_path
from .types import Capture, Explanation, Target, TokenLayout

__all__ = ["capture", "explain", "list_methods", "load_model", "load_image", "load_path", "AttnvizError",
           "ModelUnavailable", "UsageError", "ImageRejected", "Capture", "Explanation", "Target", "TokenLayout"]
__version__ = "0.1.0"

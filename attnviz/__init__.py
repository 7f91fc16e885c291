"""attnviz: see where a vision transformer looks.

>>> import attnviz
>>> model = attnviz.load_model("demo-vit-shapes")
>>> cap = attnviz.capture(model, image)            # one forward feeds every attention view
>>> exp = attnviz.explain(model, cap, "relevance", target="circle")
>>> exp.map.shape                                   # [rows, cols] over the patch grid
"""
from importlib import import_module

# Names are imported on first use (PEP 562): `python -m attnviz --help` and `models` must not pay for
# importing torch and transformers (seconds) when they never touch a model.
_EXPORTS = {"capture": "api", "explain": "api", "list_methods": "api", "load_model": "api",
            "load_image": "images", "load_path": "images", "ImageRejected": "images",
            "AttnvizError": "errors", "ModelUnavailable": "errors", "UsageError": "errors",
            "Capture": "types", "Explanation": "types", "Target": "types", "TokenLayout": "types"}

__all__ = ["capture", "explain", "list_methods", "load_model", "load_image", "load_path", "AttnvizError",
           "ModelUnavailable", "UsageError", "ImageRejected", "Capture", "Explanation", "Target", "TokenLayout"]
__version__ = "0.1.0"


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'attnviz' has no attribute '{name}'")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value            # the next access skips this function
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])

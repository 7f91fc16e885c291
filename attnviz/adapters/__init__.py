"""Model families. Importing this package registers every adapter (one line each)."""
from . import classifier  # noqa: F401
from . import clip  # noqa: F401
from . import captioning  # noqa: F401
from . import swin  # noqa: F401
from . import cnn  # noqa: F401
from . import vlm  # noqa: F401
from .base import ADAPTERS, ModelAdapter, adapter_for_config, register_adapter  # noqa: F401

"""Test setup: offline hub, tiny random models of every family saved and reloaded via from_pretrained."""
import os
import types

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

CLASSIFIER_KINDS = ("vit", "vit-headless", "deit", "deit-teacher", "beit", "dinov2", "dinov2-headless",
                    "dinov2-registers")
PREFIX = {"vit": 1, "vit-headless": 1, "deit": 2, "deit-teacher": 2, "beit": 1, "dinov2": 1,
          "dinov2-headless": 1, "dinov2-registers": 5}
CLIP_KINDS = ("clip", "siglip")
CAPTION_KINDS = ("blip", "vit-gpt2", "git")


def save_tiny(adapter, folder):
    """Write a tiny adapter's model (safetensors), processor and tokenizer as a hub folder holds them."""
    adapter.model.save_pretrained(folder, safe_serialization=True)
    adapter.processor.save_pretrained(folder)
    if getattr(adapter, "tokenizer", None) is not None:
        adapter.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory):
    """kind -> classifier folder written by save_pretrained (weights as safetensors)."""
    from attnviz.adapters.classifier import ClassifierAdapter
    root = tmp_path_factory.mktemp("models")
    return {kind: save_tiny(ClassifierAdapter.tiny(kind), root / kind) for kind in CLASSIFIER_KINDS}


@pytest.fixture(scope="session")
def clip_dirs(tmp_path_factory):
    """"clip" / "siglip" -> a tiny random image–text folder with the tokenizer the adapter writes."""
    from attnviz.adapters.clip import ClipAdapter
    return {kind: save_tiny(ClipAdapter.tiny(kind), tmp_path_factory.mktemp(f"tiny-{kind}"))
            for kind in CLIP_KINDS}


@pytest.fixture(scope="session")
def caption_dirs(tmp_path_factory):
    """kind -> a tiny random captioner folder (model, image processor, tokenizer)."""
    from attnviz.adapters.captioning import CaptionAdapter
    return {kind: save_tiny(CaptionAdapter.tiny(kind), tmp_path_factory.mktemp(f"tiny-{kind}"))
            for kind in CAPTION_KINDS}


_loaded = {}


def pytest_configure(config):
    config.addinivalue_line("markers", "ray_serve: starts a local Ray instance with Ray Serve (about a minute)")


@pytest.fixture(params=CLASSIFIER_KINDS)
def family(request, saved_models):
    """(kind, adapter) reloaded through the real loader."""
    import attnviz
    kind = request.param
    if kind not in _loaded:
        _loaded[kind] = attnviz.load_model(str(saved_models[kind]))
    return kind, _loaded[kind]


@pytest.fixture(scope="session")
def photo():
    """A non-square RGB test image with structure (not noise only)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:60, 0:90]
    img = np.stack([(x * 3) % 256, (y * 4) % 256, ((x + y) * 2) % 256], -1).astype(np.float32)
    img += rng.normal(0, 10, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


@pytest.fixture
def forwards(monkeypatch):
    """Count the model's forward passes (every page) by wrapping the loader the app uses."""
    import attnviz.ui.state as state
    count = {"n": 0}
    real = state.load_model

    def counted(self, *a, **kw):
        count["n"] += 1
        return type(self)._run(self, *a, **kw)

    def loader(spec=None):
        adapter = real(spec)
        # a bound method, not a closure: a deep copy of the adapter (the randomisation check's) is rebound to
        # the copy and runs its own model
        adapter._run = types.MethodType(counted, adapter)
        return adapter
    monkeypatch.setattr(state, "load_model", loader)
    return count


# --- CNNs (issue 11): tiny random ResNet, ConvNeXt, RegNet-Y, EfficientNet and the project's gated CNN ---
CNN_KINDS = ("resnet", "convnext", "regnet-y", "efficientnet", "gated")
_cnns = {}


def reload_once(cache: dict, folders: dict, kind: str):
    """The adapter of ``folders[kind]`` through the real loader (from_pretrained), loaded once per session."""
    import attnviz
    return cache[kind] if kind in cache else cache.setdefault(kind, attnviz.load_model(str(folders[kind])))


@pytest.fixture(scope="session")
def cnn_dirs(tmp_path_factory):
    """kind -> a tiny random CNN folder (safetensors model + image processor)."""
    from attnviz.adapters.cnn import CnnAdapter
    return {kind: save_tiny(CnnAdapter.tiny(kind), tmp_path_factory.mktemp(f"tiny-{kind}")) for kind in CNN_KINDS}


@pytest.fixture(params=CNN_KINDS)
def cnn(request, cnn_dirs):
    """(kind, adapter) of each tiny CNN, saved and reloaded."""
    return request.param, reload_once(_cnns, cnn_dirs, request.param)

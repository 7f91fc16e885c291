"""Offline demo: a synthetic scene generator with known masks, and the training
script of the small demo models shipped under ``models/``.

Names are loaded lazily so that ``python -m attnviz.demo.scenes`` runs cleanly.
"""

_SCENE_NAMES = ("COLOURS", "IMAGE_SIZE", "SHAPES", "Scene", "SceneObject", "caption_for",
                "make_dataset", "make_scene", "mask_for_class", "scene_rng", "scene_to_pil",
                "to_arrays")

__all__ = list(_SCENE_NAMES)


def __getattr__(name):
    if name in _SCENE_NAMES:
        from attnviz.demo import scenes

        return getattr(scenes, name)
    raise AttributeError(f"module 'attnviz.demo' has no attribute {name!r}")

"""Offline demo: a synthetic scene generator with known masks, and the training
script of the small demo models shipped under ``models/``."""

from attnviz.demo.scenes import (  # noqa: F401
    COLOURS,
    IMAGE_SIZE,
    SHAPES,
    Scene,
    SceneObject,
    caption_for,
    make_dataset,
    make_scene,
    mask_for_class,
    scene_to_pil,
    to_arrays,
)

"""The demo VLM's questions and prompt: what it is asked about a scene, the ground-truth answers, and greedy answering.

Shared by the trainer (:mod:`attnviz.demo.train_vlm`) and the evaluation (:mod:`attnviz.demo.evaluate_vlm`).
"""

from __future__ import annotations

from typing import NamedTuple

IMAGE_TOKEN = "<image>"
NUMBERS = ("one", "two", "three", "four", "five")
QUESTION_TYPES = ("colour", "shape", "where", "count", "exists")


class Question(NamedTuple):
    kind: str                 # one of QUESTION_TYPES
    text: str                 # "what colour is the triangle?"
    answer: str               # "red", "top left", "two", "yes"
    target: int | None        # index (in scene.objects) of the one object the question names, else None


def prompt(question: str) -> str:
    """LLaVA-1.5's prompt around one question (what the chat template writes for one user turn)."""
    return f"USER: {IMAGE_TOKEN}\n{question} ASSISTANT:"


def quadrant(bbox, size: int) -> str:
    """'top left' … 'bottom right': the quadrant of the box centre (a centre on a midline counts as top / left)."""
    l, t, r, b = bbox
    return f"{'top' if t + b <= size else 'bottom'} {'left' if l + r <= size else 'right'}"


def questions_for(scene) -> list[Question]:
    """Every question this model is trained on, with its answer, for one scene."""
    from attnviz.scenes import SHAPES

    size = scene.image.shape[0]
    out: list[Question] = []
    colours = [o.colour for o in scene.objects]
    for i, o in enumerate(scene.objects):
        out.append(Question("colour", f"what colour is the {o.shape}?", o.colour, i))
        out.append(Question("where", f"where is the {o.shape}?", quadrant(o.bbox, size), i))
        if colours.count(o.colour) == 1:
            out.append(Question("shape", f"what shape is the {o.colour} one?", o.shape, i))
    out.append(Question("count", "how many shapes are there?", NUMBERS[len(scene.objects) - 1], None))
    present = {o.shape: i for i, o in enumerate(scene.objects)}
    for s in SHAPES:
        a = f"{'an' if s[0] in 'aeiou' else 'a'} {s}"
        out.append(Question("exists", f"is there {a}?", "yes" if s in present else "no", present.get(s)))
    return out


def answer_key(answer: str) -> str:
    """How answers are compared: lower case, words only (punctuation and spacing ignored)."""
    return " ".join("".join(ch if ch.isalnum() else " " for ch in answer.lower()).split())


def answer(model, processor, images, questions: list[str], max_new_tokens: int = 4) -> list[str]:
    """Greedy answers (decoded words) for PIL images and their questions, through the processor."""
    import torch

    tok = processor.tokenizer
    inputs = processor(images=list(images), text=[prompt(q) for q in questions], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    new = out[:, inputs["input_ids"].shape[1]:]
    return [tok.decode(row, skip_special_tokens=True).strip() for row in new]

"""The teaching page's numbers and words: one head's attention for one query, taken apart (no Streamlit).

Everything here reads an :class:`attnviz.anatomy.Anatomy` (the model's own q, k, v and attention) and the
capture's token layout, and turns it into what the lesson shows: per-token arrays for one head and one
query, and sentences that are computed from those arrays, so a note under a plot is always true of the
plot (Vaswani et al. 2017 for the arithmetic; the ViT paper, Dosovitskiy et al. 2021, Fig. 7, for the
attention distance; Caron et al. 2021 for DINO's thresholded heads).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..anatomy import Anatomy
from ..types import TokenLayout

CHECK_TOLERANCE = 1e-5          # the softmax recomputed here must equal the model's row to this


def token_label(layout: TokenLayout, index: int) -> str:
    """A token's name in words: CLS, distillation token, register 2, patch (3, 4)."""
    if index < layout.n_prefix:
        name = layout.prefix_names[index]
        if name == "cls":
            return "CLS"
        if name == "distillation":
            return "distillation token"
        if name.startswith("register"):
            return f"register {name[len('register'):]}"
        return name
    r, c = divmod(index - layout.n_prefix, layout.cols)
    return f"patch ({r}, {c})"


def sequence_sentence(layout: TokenLayout) -> str:
    """How the image became a sequence: patches, prefix tokens, total."""
    ph, pw = layout.patch_size
    h, w = layout.input_size
    prefix = [token_label(layout, i) for i in range(layout.n_prefix)]
    names = ", ".join(prefix)
    head = (f"The model sees the image at {w}×{h} pixels and cuts it into {layout.rows}×{layout.cols} = "
            f"{layout.n_patches} patches of {pw}×{ph} pixels.")
    if not prefix:
        return head + f" It adds no extra tokens: the sequence is the {layout.n_tokens} patches, row by row."
    return (head + f" In front of them it puts {len(prefix)} extra token{'s' if len(prefix) > 1 else ''} "
            f"({names}): {layout.n_tokens} tokens in all, the extra ones first, then the patches row by row.")


@dataclass(frozen=True)
class HeadView:
    """One head's attention for one query token, every step as a per-token array (float64)."""

    head: int
    query: int                       # sequence index of the query token
    q: np.ndarray                    # [d] the query's vector
    k: np.ndarray                    # [T, d] every token's key
    v: np.ndarray                    # [T, d] every token's value
    scale: float                     # 1/√d as the module uses it
    dot: np.ndarray                  # [T] q·k_j/√d
    bias: Optional[np.ndarray]       # [T] the position term (BEiT), or None
    scores: np.ndarray               # [T] what the softmax sees
    weights: np.ndarray              # [T] softmax recomputed here
    model: np.ndarray                # [T] the model's own attention row
    output: np.ndarray               # [d] Σ_j weights_j v_j

    @property
    def max_difference(self) -> float:
        return float(np.abs(self.weights - self.model).max())

    @property
    def check_passes(self) -> bool:
        return self.max_difference <= CHECK_TOLERANCE


def head_view(an: Anatomy, head: int, query: int) -> HeadView:
    """Read head ``head``'s row for token ``query`` out of ``an`` (no model run)."""
    def np64(t):
        return t.detach().double().cpu().numpy()
    bias = an.bias_row(query)
    has_bias = bias is not None and bool(bias[head].abs().max() > 0)
    return HeadView(
        head=head, query=query, q=np64(an.q[head, query]), k=np64(an.k[head]), v=np64(an.v[head]),
        scale=an.scale, dot=np64(an.dot(query)[head]), bias=np64(bias[head]) if has_bias else None,
        scores=np64(an.scores(query)[head]), weights=np64(an.softmax(query)[head]),
        model=np64(an.model_attention[head, query]), output=np64(an.output(query)[head]))


def patch_grid(layout: TokenLayout, per_token: np.ndarray) -> np.ndarray:
    """The patch part of a per-token array as [rows, cols] (prefix tokens dropped)."""
    return np.asarray(per_token)[layout.n_prefix:].reshape(layout.rows, layout.cols)     # [rows, cols]


def capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def query_sentence(layout: TokenLayout, view: HeadView) -> str:
    q = view.q
    return (f"The query of {token_label(layout, view.query)} in head {view.head} is {q.size} numbers "
            f"(from {q.min():.2f} to {q.max():.2f}, length {np.linalg.norm(q):.2f}). "
            f"Every token has one, made by the same learned matrix from that token's own vector.")


def keys_sentence(layout: TokenLayout, view: HeadView) -> str:
    norms = np.linalg.norm(view.k, axis=1)
    hi, lo = int(norms.argmax()), int(norms.argmin())
    return (f"{view.k.shape[0]} keys of {view.k.shape[1]} numbers each, one per token. The longest key is "
            f"{token_label(layout, hi)}'s ({norms[hi]:.2f}), the shortest {token_label(layout, lo)}'s "
            f"({norms[lo]:.2f}).")


def scores_sentence(layout: TokenLayout, view: HeadView) -> str:
    s = view.scores
    hi, lo = int(s.argmax()), int(s.argmin())
    neg = int((s < 0).sum())
    out = (f"Scores run from {s[lo]:.2f} ({token_label(layout, lo)}) to {s[hi]:.2f} "
           f"({token_label(layout, hi)}); {neg} of {s.size} are negative.")
    if view.bias is not None:
        b = view.bias
        out += (f" The position term alone runs from {b.min():.2f} to {b.max():.2f}; the content term "
                f"q·k/√d from {view.dot.min():.2f} to {view.dot.max():.2f}.")
    return out


def softmax_sentence(layout: TokenLayout, view: HeadView) -> str:
    w = view.weights
    order = np.argsort(-w, kind="stable")
    top = int(order[0])
    n_half = int(np.searchsorted(np.cumsum(w[order]), 0.5) + 1)
    out = (f"After the softmax the weights are all positive and add up to {w.sum():.4f}. "
           f"{capital(token_label(layout, top))} gets the most: {_pct(w[top])}. "
           f"The {n_half} largest weights hold half of the attention (of {w.size} tokens).")
    if view.query != top:
        out += f" The query token itself gets {_pct(w[view.query])}."
    if layout.n_prefix:
        pre = float(w[:layout.n_prefix].sum())
        out += f" The extra tokens together get {_pct(pre)}."
    return out


def check_sentence(view: HeadView) -> str:
    d = view.max_difference
    if view.check_passes:
        return (f"Largest difference from the model's own attention row: {d:.1e} (within {CHECK_TOLERANCE:g}): "
                "the page recomputed exactly what the model did.")
    return (f"Largest difference from the model's own attention row: {d:.1e}, more than {CHECK_TOLERANCE:g}: "
            "the recomputation does not match this model; please report it.")


def top_tokens(view: HeadView, n: int = 5) -> list[int]:
    """The ``n`` tokens with the largest weights, heaviest first."""
    return [int(i) for i in np.argsort(-view.weights, kind="stable")[:n]]


def output_sentence(layout: TokenLayout, view: HeadView, n: int = 5) -> str:
    top = top_tokens(view, n)
    share = float(view.weights[top].sum())
    return (f"The output is {view.output.size} numbers: each token's value times its weight, added up. "
            f"The {len(top)} heaviest tokens ({', '.join(token_label(layout, i) for i in top)}) carry "
            f"{_pct(share)} of the weight; the other {view.weights.size - len(top)} share the rest.")


def heads_sentence(layout: TokenLayout, views: list[HeadView]) -> str:
    """Where each head's largest weight goes, and which head is most / least concentrated."""
    parts = []
    for v in views:
        top = int(v.weights.argmax())
        parts.append(f"head {v.head} → {token_label(layout, top)} ({_pct(v.weights[top])})")
    peaks = [float(v.weights.max()) for v in views]
    out = "Largest weight per head: " + "; ".join(parts) + "."
    if len(views) > 1:
        sharp, flat = int(np.argmax(peaks)), int(np.argmin(peaks))
        distinct = len({int(v.weights.argmax()) for v in views})
        out += (f" {distinct} different token{'s' if distinct > 1 else ''} top the {len(views)} heads. "
                f"Head {views[sharp].head} is the most focused, head {views[flat].head} the most spread out.")
    return out


def distance_sentence(distance: np.ndarray, where: str) -> str:
    """Mean attention distance [L, H] in pixels, summarised per layer as the plot shows it."""
    L = distance.shape[0]
    lo0, hi0 = distance[0].min(), distance[0].max()
    lo1, hi1 = distance[-1].min(), distance[-1].max()
    m0, m1 = distance[0].mean(), distance[-1].mean()
    if L == 1:
        return f"{where}: the heads look {lo0:.1f} to {hi0:.1f} pixels away on average."
    trend = "further" if m1 > m0 * 1.05 else "nearer" if m1 < m0 * 0.95 else "about as far"
    near = np.unravel_index(int(distance.argmin()), distance.shape)
    far = np.unravel_index(int(distance.argmax()), distance.shape)
    return (f"{where}: in layer 0 the heads look {lo0:.1f} to {hi0:.1f} pixels away on average (spread "
            f"{hi0 - lo0:.1f} px); in layer {L - 1}, {lo1:.1f} to {hi1:.1f} px (spread {hi1 - lo1:.1f} px). "
            f"The average head of the last layer looks {trend} than in the first ({m0:.1f} → {m1:.1f} px). "
            f"Nearest: layer {near[0]}, head {near[1]} ({distance[near]:.1f} px); farthest: layer {far[0]}, "
            f"head {far[1]} ({distance[far]:.1f} px).")


def trend_sentence(distance: np.ndarray) -> str:
    """How this model's plot compares with the ViT paper's finding (later layers look farther), from the
    plotted numbers: never promises what the plot does not show."""
    if distance.shape[0] < 2:
        return ""
    m0, m1 = float(distance[0].mean()), float(distance[-1].mean())
    if m1 > m0 * 1.05:
        return "As in the ViT paper, the later layers of this model look farther than its first."
    return ("Unlike the trained ViTs of the ViT paper, the last layer of this model does not look farther than its "
            f"first here ({m0:.1f} → {m1:.1f} px on average).")


def layer_name(layer: int, n_layers: int) -> str:
    """'layer 11 (the last)', 'layer 0 (the first)', 'layer 4 of 0–11'."""
    if n_layers > 1 and layer == n_layers - 1:
        return f"layer {layer} (the last)"
    if layer == 0:
        return "layer 0 (the first)"
    return f"layer {layer} of 0–{n_layers - 1}"


def mask_sentence(masks: np.ndarray, share: float, query: str, where: str = "") -> str:
    """DINO masks [H, rows, cols]: how many patches each head needs for ``share`` (``where``: the layer shown)."""
    counts = masks.reshape(masks.shape[0], -1).sum(1)
    n = masks[0].size
    fewest, most = int(counts.argmin()), int(counts.argmax())
    lead = f"In {where}, to hold" if where else "To hold"
    return (f"{lead} {share:.0%} of {query}'s attention to the patches, head {fewest} needs {counts[fewest]} of "
            f"{n} patches, head {most} needs {counts[most]}. Fewer patches = a more focused head.")


# --- the guided walk-through ----------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    key: str             # the section it shows
    title: str
    text: str            # what you see, what to try (plain words; Markdown)
    needs_query: bool    # shown beside the clickable image
    last_layer: bool = False   # opens on the last layer (what the step shows is clearest there; the user may move it)


STEPS: tuple[Step, ...] = (
    Step("tokens", "The image becomes a sequence of tokens",
         "A vision transformer does not see pixels one by one. It cuts the image into square **patches**, turns "
         "each patch into a vector of numbers (a **token**), and works on the list of tokens. Most models put "
         "one or more extra tokens in front: **CLS**, whose final vector the classifier reads, and in some "
         "models a distillation token or *register* tokens. **Try:** click any patch on the image: it becomes "
         "the *query*, the token whose attention we follow on the next steps.", True),
    Step("query", "Each token asks a question: its query",
         "In every layer, each **head** multiplies each token's vector by a learned matrix to get a **query** "
         "vector: roughly, *what am I looking for?* The bars are the clicked patch's query, number by number. "
         "**Try:** change the head: the same patch asks a different question in every head.", True),
    Step("keys", "Every token offers an answer: its key",
         "A second learned matrix gives every token a **key**: *what do I contain?* Each row of the picture is "
         "one token's key, the same length as the query. **Try:** hover a row to see which token it is.", True),
    Step("scores", "Scores: how well each key fits the query",
         "The score of a token is the **dot product** of the query with that token's key, divided by √d (d = "
         "the length of the vectors) so that scores do not grow with d. Red patches fit the query (positive), "
         "blue ones do not (negative). Some models (BEiT) add a learned **position term** that depends only "
         "on how far apart the two patches are; it is then drawn on its own. **Try:** hover the map to read "
         "each score; click another patch and watch the red area move.", True),
    Step("softmax", "Softmax: scores become shares",
         "The **softmax** raises e to each score and divides by the total: every weight is positive and they "
         "add up to 1 (100 %). Big scores win by a lot. The page then compares its own result with the "
         "attention the model itself returned: where they agree the points lie on the diagonal, and the "
         "largest difference is printed. **Try:** look at how much goes to the extra tokens (CLS): heads often park attention "
         "there.", True),
    Step("output", "The output: a weighted mix of values",
         "A third learned matrix gives every token a **value**: *what I pass on if you listen to me*. The "
         "head's output for the query is the sum of all values, each multiplied by its weight: the rows "
         "show the heaviest tokens' weighted values, and the last row is the total. This is the new "
         "information the query patch takes into the next layer.", True),
    Step("heads", "Many heads look at different things",
         "A layer has several heads side by side, each with its own three matrices, so each asks its own "
         "question of the same tokens. Their outputs are joined and mixed before the next layer: this is "
         "**multi-head attention**. **Try:** click other patches and other layers. The **Heads** page shows "
         "every layer and head at once. This step opens on the last layer, where heads differ most.", True,
         True),
    Step("distance", "Near and far: where heads look across depth",
         "For every head, the **mean attention distance** is how far, in pixels, a patch looks on average "
         "(weighted by its attention). In the ViT paper's trained models (Dosovitskiy et al. 2021, Fig. 7) "
         "some heads of the first layers look near and some far, and the heads of later layers look far; the "
         "sentence under the plot says whether this model does the same. Each dot is one head, the chosen "
         "layer's head ringed. **Try:** switch to the average over the sample images the model is meant for, "
         "and compare with what this one image shows.", False, True),
    Step("dino", "Heads that find objects (DINO)",
         "Caron et al. (DINO, 2021) kept, for each head, only the patches that hold most of the CLS token's "
         "attention in the last layer. In their self-supervised models these patches outline the objects. "
         "This step opens on the last layer. **Try:** move the share: at 60 % each head keeps the smallest set "
         "of patches holding 60 % of its attention; move the layer to see the outlines fade in earlier "
         "layers.", False, True),
    Step("explain", "Attention is not an explanation by itself",
         "Attention shows where a token *gathers* information, not what changed the answer: values are mixed "
         "again in later layers and by the feed-forward parts in between, so a bright patch may not matter and "
         "a dark one may. To ask what made the model decide, use methods that follow the output back "
         "(relevance, gradients, occlusion) and check them: the Explore page's **Is the map faithful?** "
         "panel deletes the patches a map ranks first and watches the score. Captioning models also use "
         "**cross-attention**: the text decoder attends to the image's tokens (Caption page).", False),
)


def step_index(key: str) -> int:
    return next(i for i, s in enumerate(STEPS) if s.key == key)

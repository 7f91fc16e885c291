"""Teaching notes: what each view shows, in plain words, and where it can mislead."""
from __future__ import annotations

PAGES = {
    "compare": (
        "**What you see.** Two models look at the same image. Each side shows what its model predicts and a map "
        "for the same class: the same method where both models have it (Grad-CAM, integrated gradients, "
        "occlusion, ...), or each model's own view (relevance for a transformer, the CBAM spatial gate for a "
        "convolutional network with one). Each map keeps its own colour scale, shown in its legend: two models' "
        "scores differ in size, and two methods in units. Under each map, deletion / insertion (on a click) says "
        "how faithful it is: deletion AUC lower is better, insertion AUC higher is better."
    ),
    "explore": (
        "**What you see.** The model looked at your image once. The bar chart is what it thinks the image "
        "shows. Pick a *target* (the class to explain) and a *method*; the coloured overlay marks the "
        "parts of the image that method credits for that target. Bright = more.\n\n"
        "**Read with care.** Different methods answer different questions, so they disagree — that is "
        "normal and worth discussing. Compare a few side by side: they are then drawn on one shared scale, "
        "each map measured against its own average (2× means twice that map's average).\n\n"
        "**The grey band** (if any) is the part of the image the model never saw: it crops the centre."
    ),
    "heads": (
        "**What you see.** A vision transformer cuts the image into square patches and, in every layer, "
        "each *head* decides how much each patch should listen to every other patch. Each thumbnail is "
        "one head: where the chosen *query* token (by default CLS, the token the model classifies from) "
        "looks. Click a thumbnail, or use the layer and head pickers, to enlarge it.\n\n"
        "**Query a patch.** Choose *a patch* as the query and click the image: you then see where that "
        "patch looks. DeiT adds a *distillation* token and some DINOv2 models add *register* tokens; "
        "they can be queries too.\n\n"
        "**The distance plot** is the ViT paper's Figure 7 for this one image: for each head, how far "
        "(in pixels) it looks on average; the sentence under it says what this model does here. Over many "
        "images, the paper's large trained ViTs mix near and far heads in early layers and look far in later "
        "ones; a small, random or differently trained model need not, so read the plot, not the rule. "
        "The entropy plot says how spread out each head's attention is, in nats (natural-log units): the "
        "dotted line, the log of the number of tokens, is perfectly even attention.\n\n"
        "**Attention is not explanation.** A head looking somewhere does not mean that place changed "
        "the answer: values are mixed again in later layers."
    ),
    "caption": (
        "**What you see.** A captioning model writes its caption one word at a time. Before each word, "
        "its text decoder *cross-attends* to the image: it weighs the image encoder's patches and reads "
        "a mix of them. Click a word to see where the decoder looked while writing it; the strip below "
        "shows every word in order on one colour scale (as in *Show, Attend and Tell*, Xu et al. 2015). "
        "Type your own caption in the sidebar to ask where the model would look for *your* words: it is "
        "then scored word by word instead of written.\n\n"
        "**Layers and heads.** Each decoder layer and head has its own cross-attention; they often "
        "disagree, and some heads park their attention on a few uninformative patches. *Caption "
        "relevance* (Chefer et al. 2021) weights attention by its gradient for the chosen word and "
        "carries it back through the layers: usually sharper, and it moves when you pick another word.\n\n"
        "**Read with care.** Attention is not explanation: the encoder has already mixed information "
        "between patches, so a word can be written from a patch that only *carries* the object's "
        "information. Small words (\"a\", \"and\") and words the caption's grammar predicts have "
        "maps that say little about the image. The probabilities are the model's own confidence in each "
        "word where it wrote it, not whether the word is true."
    ),
    "prompts": (
        "**What you see.** An image–text model (CLIP, SigLIP) turns the image and each prompt into "
        "vectors and scores how well they match. Type prompts one per line. The bar chart compares the "
        "prompts; below, one map per prompt shows which parts of the image the match leans on (Chefer "
        "et al.'s relevance by default), all maps on one colour scale so a weak match also looks weak. "
        "Under each map the prompt's words are shaded by how much each mattered to the match.\n\n"
        "**Read with care.** CLIP's probabilities are a softmax *over your prompts*: they only rank the "
        "prompts you typed, and change when you add one. A map says where the match came from, not "
        "that the object is there: a prompt that matches badly still gets a map (look at its "
        "probability). Word shading compares the words of one prompt, not words across prompts.\n\n"
        "**The offline demo model** (demo-clip-shapes) knows only synthetic scenes: seven colours, five "
        "shapes (circle, square, triangle, cross, diamond). Try a 'scene' sample with prompts such as "
        "'a red circle'."
    ),
}

METHODS = {
    "attention": (
        "One layer's attention from one query token: where that token gathers information from. "
        "Caveat: attention is not explanation — it ignores what the later layers do with what was "
        "gathered, and it is the same whatever class you pick."
    ),
    "rollout": (
        "Attention rollout multiplies attention through all layers (adding the skip connection), to "
        "estimate how much each patch flows into the CLS token in the end. Caveat: it is class-agnostic "
        "— the map is the same for every target — and discarding weak links changes it a lot."
    ),
    "relevance": (
        "Chefer et al.'s relevance: attention weighted by how much it changes the target's score (the "
        "chosen class, prompt or caption word; its gradient), accumulated through the layers. "
        "Target-specific: pick another target and the map moves. Caveat: gradients are local — they say "
        "what a small change would do."
    ),
    "grad_rollout": (
        "Rollout of attention weighted by its positive gradient for the target: rollout made "
        "class-specific. Caveat: the positive part only, so evidence against the class is not shown."
    ),
    "attn_grad": (
        "One layer's attention times its positive gradient for the target, heads averaged. A quick "
        "class-specific look at a single layer; earlier layers are noisier."
    ),
    "spatial_attention": (
        "CBAM's spatial gate (Woo et al. 2018) in one block of a convolutional network: a sigmoid over a 7×7 "
        "convolution of the channel-mean and channel-max maps, one value in [0, 1] per location, multiplied "
        "into the features. Class-agnostic. Caveat: it says what the block lets through, not why the class won."
    ),
    "channel_attention": (
        "Squeeze-and-excitation (Hu et al. 2018) or ECA gates: one value in [0, 1] per channel of a block, "
        "computed from this image and multiplied into that channel. A map over channels, not over the image. "
        "Caveat: a channel's meaning is not given; its feature map over the image shows what it responds to."
    ),
    "grad_cam": (
        "Grad-CAM on a block's patch tokens: each feature channel weighted by its average gradient. "
        "Coarse (one value per patch) and class-specific. Caveat: the last block's patch tokens do not "
        "reach the class score, so the default is the block before."
    ),
    "saliency": (
        "Vanilla gradient: how much each pixel's brightness would change the class score. Caveat: "
        "saliency is noisy and often looks like an edge detector; SmoothGrad averages the noise away."
    ),
    "input_x_gradient": (
        "Gradient times the pixel value: a signed first-order estimate of each pixel's contribution. "
        "Red helps the class, blue hurts it. Caveat: noisy, and dark pixels get little credit."
    ),
    "integrated_gradients": (
        "Integrated gradients adds up gradients along a path from a baseline (black) image to yours; "
        "the attributions should sum to the score difference. Caveat: the map depends on the baseline "
        "and on the number of steps — check the convergence delta shown below (small is good; raise the "
        "steps if it is not)."
    ),
    "gradient_shap": (
        "Gradient SHAP: integrated gradients averaged over random baselines with noise — an estimate of "
        "SHAP values. Caveat: random; more samples give a steadier map."
    ),
    "smoothgrad": (
        "SmoothGrad: saliency averaged over noisy copies of the image, so the speckle cancels out. "
        "Caveat: the noise level changes what survives."
    ),
    "occlusion": (
        "Occlusion hides one window of patches at a time and records how much the class score drops. "
        "Easy to trust, because it really changes the input. Caveat: slow (one model run per window), "
        "and the result depends on the fill used for hidden patches (the baseline)."
    ),
    "feature_ablation": (
        "Hides one patch at a time (filled with the baseline) and records the score change. Caveat: slow, "
        "depends on the baseline fill, and misses effects that need several patches hidden together."
    ),
    "lime": (
        "LIME hides random sets of patches and fits a simple linear model to predict the score from "
        "which patches were visible. Caveat: slow, random, and depends on the baseline fill and the "
        "number of samples."
    ),
    "kernel_shap": (
        "Kernel SHAP: like LIME, with weights chosen so the result estimates Shapley values (a fair "
        "share of the score per patch). Caveat: slow, random, and depends on the baseline fill."
    ),
    "cross_attention": (
        "Where the caption writer looked in the image when it wrote this word: one decoder layer's "
        "cross-attention to the image patches. Caveat: attention is not explanation, and the encoder has "
        "already mixed the patches before the decoder reads them."
    ),
    "caption_relevance": (
        "Chefer et al.'s relevance for one caption word: self- and cross-attention weighted by their "
        "gradients for that word, carried back to the image patches. Pick another word and the map moves."
    ),
    "text_relevance": (
        "Which words of the prompt mattered for its match with the image: Chefer et al.'s relevance on "
        "the text side, a value per word rather than a map over pixels (the shading of each prompt's words; "
        "the CLI's --json lists the values)."
    ),
    "text_attention": (
        "How the prompt's summary token spreads its attention over the prompt's words (a value per word, "
        "not a map over pixels: see the CLI). Caveat: attention is not explanation."
    ),
    "grad_cam_pp": (
        "Grad-CAM++ (Chattopadhay et al. 2018): channel weights from positive gradients with second- and "
        "third-order terms, so several instances of a class each get credit. Class-specific. Caveat: the "
        "higher-order terms assume an exponential score; on logits they are an approximation."
    ),
    "hires_cam": (
        "HiResCAM (Draelos & Carin 2020): each activation multiplied by its own gradient, then summed over "
        "channels, instead of a channel-averaged gradient. Class-specific. Caveat: as coarse as the layer's grid."
    ),
    "layer_cam": (
        "LayerCAM (Jiang et al. 2021): activations weighted by their positive gradients position by position; "
        "useful at earlier, finer layers. Class-specific. Caveat: early layers respond to edges of every object."
    ),
    "xgrad_cam": (
        "XGrad-CAM (Fu et al. 2020): gradients weighted by the activations themselves, chosen to satisfy two "
        "axioms (sensitivity and conservation). Class-specific. Caveat: as coarse as the layer's grid."
    ),
    "score_cam": (
        "Score-CAM (Wang et al. 2020): each channel's map masks the image and the target's score with that mask "
        "is the channel's weight; no gradients. Class-specific. Caveat: one forward per channel: slow."
    ),
    "ablation_cam": (
        "Ablation-CAM (Desai & Ramaswamy 2020): a channel's weight is how much the score drops when that channel "
        "is zeroed; no gradients. Class-specific. Caveat: one forward per channel: slow."
    ),
    "eigen_cam": (
        "Eigen-CAM (Muhammad & Yeasin 2020): the first principal component of the layer's activations; no "
        "gradients and no class. Caveat: it shows what the layer holds most strongly, whatever the class."
    ),
    "legrad": (
        "LeGrad (Bousselham et al. 2024): every layer's tokens are read out through the model's own head, and the "
        "positive gradient of that score with respect to the layer's attention is averaged over heads and queries, "
        "then summed over layers. Class-specific. Caveat: it follows the attention maps' sensitivity, not the "
        "values they carry."
    ),
    "clip_similarity": (
        "Each patch's embedding, taken through the model's own projection, compared with the prompt's embedding "
        "(the MaskCLIP / CLIP Surgery line of work); no gradients. Caveat: CLIP's raw patch similarities are "
        "often inverted or noisy; the surgery option removes the part every prompt shares."
    ),
    "noise_tunnel": (
        "A noise tunnel (Smilkov et al. 2017; Adebayo et al. 2018): a gradient method averaged over noisy copies "
        "of the image (SmoothGrad), of its squares (SmoothGrad²) or their variance (VarGrad). Class-specific. "
        "Caveat: the noise level changes the picture; it costs one method run per sample."
    ),
    "image_attention": (
        "A vision-language model's attention from the position that predicts an answer word to the image tokens, "
        "one decoder layer (or their mean) and one head (or fused). Caveat: raw attention, no gradient: what the "
        "layer read, not what moved the word."
    ),
    "answer_relevance": (
        "Chefer et al. (2021)'s relevance carried through the decoder from the answer word's logit, read on the "
        "image tokens (optionally on into the vision tower). Class-specific: it follows the word. Caveat: the "
        "positive part only."
    ),
    "question_relevance": (
        "The same relevance row read on the question's words: which words of the question mattered for this "
        "answer word. Caveat: the positive part only."
    ),
    "answer_saliency": (
        "The gradient of the answer word's log-probability with respect to the image's pixels. Caveat: noisy, "
        "as saliency is for classifiers."
    ),
    "answer_integrated_gradients": (
        "Integrated gradients (Sundararajan et al. 2017) of the answer word's log-probability from a baseline "
        "image. Caveat: one model run per step."
    ),
    "answer_smoothgrad": (
        "SmoothGrad of the answer word's log-probability: gradients averaged over noisy copies of the image. "
        "Caveat: one model run per sample."
    ),
    "answer_occlusion": (
        "How much the answer word's log-probability drops when each image region is greyed out. Caveat: one "
        "model run per region."
    ),
}


# What a method's numbers measure: the title of its map's legend.
UNITS = {
    "attention": "attention weight (a row sums to 1)",
    "rollout": "share of the attention flow",
    "relevance": "relevance (score units)",
    "grad_rollout": "gradient-weighted attention flow",
    "attn_grad": "gradient-weighted attention",
    "grad_cam": "Grad-CAM (gradient-weighted activation)",
    "saliency": "gradient size",
    "smoothgrad": "average gradient size",
    "input_x_gradient": "attribution (score units)",
    "integrated_gradients": "attribution (score units)",
    "gradient_shap": "attribution (score units)",
    "occlusion": "score drop when hidden",
    "feature_ablation": "score drop when hidden",
    "lime": "surrogate weight (score units)",
    "kernel_shap": "Shapley value estimate (score units)",
    "cross_attention": "cross-attention weight",
    "caption_relevance": "relevance (score units)",
    "spatial_attention": "spatial gate (0 to 1)",
    "channel_attention": "channel gate (0 to 1)",
    "text_relevance": "relevance (score units)",
    "text_attention": "attention weight",
    "grad_cam_pp": "Grad-CAM++ (weighted activation)",
    "hires_cam": "HiResCAM (gradient × activation)",
    "layer_cam": "LayerCAM (weighted activation)",
    "xgrad_cam": "XGrad-CAM (weighted activation)",
    "score_cam": "Score-CAM (score-weighted activation)",
    "ablation_cam": "Ablation-CAM (drop-weighted activation)",
    "eigen_cam": "first principal component",
    "legrad": "positive attention gradient, summed over layers",
    "clip_similarity": "patch–prompt similarity",
    "noise_tunnel": "averaged attribution",
    "image_attention": "attention weight",
    "answer_relevance": "relevance (log-probability units)",
    "question_relevance": "relevance (log-probability units)",
    "answer_saliency": "gradient size",
    "answer_integrated_gradients": "attribution (log-probability units)",
    "answer_smoothgrad": "average gradient size",
    "answer_occlusion": "log-probability drop when hidden",
}


def units(method: str) -> str:
    return UNITS.get(method, "value")


HEADS_DISTANCE_GLOSS = (
    "Distance: for each patch query, the attention-weighted mean distance to the patches it looks at "
    "(attention to CLS / register tokens left out, the rest renormalised), averaged over patches. "
    "Entropy in nats: 0 when a head looks at one token, log(tokens) when it looks evenly at all.")


FAITHFULNESS = (
    "Two checks of whether the map explains **the model** rather than just looking plausible. "
    "Both run the model many times, so they wait for a click.\n\n"
    "**Deletion / insertion** (Petsiuk et al. 2018): grey out the image's parts in the map's order, "
    "most important first, and watch the target's probability (a caption word's raw score, for "
    "captioners); a faithful map makes it **fall fast** (a small area under the curve, AUC). "
    "Insertion starts from a blurred image and puts parts back in the same "
    "order: it should **rise fast**. The dotted lines use a random order: a map is only informative "
    "where its curves beat them.\n\n"
    "**Randomisation check** (Adebayo et al. 2018): on a copy of the model, the learned weights are "
    "replaced by random ones, last block first, and the map is made again. A map that explains the "
    "model should change (correlation with the original falls towards 0); one that stays alike shows "
    "the image's edges or the architecture more than what the model learned."
)


def method_note(name: str, description: str = "") -> str:
    """The note for a method; the registry's one-line description when there is none."""
    return METHODS.get(name) or description or "No note for this method yet."

"""Where does the model look? Attention maps per word, attention as SAM prompts, a logit lens.

::

    from pixelkit import Predictor, analysis, viz

    p = Predictor.from_checkpoint("outputs/quickstart/checkpoints/pixelllm.ckpt")
    p.set_image("data/shapes/images/val/000000002401.png")
    maps = analysis.word_attention(p)                   # one h x w map per generated word
    viz.draw_word_maps(p.image.image, maps.words, maps.image_maps(), maps.points, maps.peaks())
    lens = analysis.logit_lens(p)                       # top-k words per visual token and layer
    viz.draw_lens_grid(p.image.image, lens.grid_words(layer=1))

* :mod:`~pixelkit.analysis.attention`: the LM's attention from each word's state to the
  visual tokens (T5 cross-attention or a causal LM's self-attention, as ``transformers``
  returns it under eager attention), mapped back to the image grid; mean or VL-SAM
  mean-max heads; mean, last, one layer or rollout over layers.
* :mod:`~pixelkit.analysis.prompts`: VL-SAM's attention-as-prompts: peak and low cells of
  a word's map as SAM point prompts, next to SAM prompted by the point head's point.
* :mod:`~pixelkit.analysis.lens`: a logit lens over the visual tokens.
* :mod:`~pixelkit.analysis.shapes`: the shapes-world experiments of notebook 09 (attention
  vs point head on colour and shape words; the lens's cells against the objects).
"""

from pixelkit.analysis.attention import (
    HEADS,
    LAYERS,
    AttentionPass,
    WordMaps,
    attention_pass,
    cell_centres,
    combine_heads,
    eager_attention,
    encoder_decoder_rollout,
    head_weights,
    rollout,
    visible_cells,
    word_attention,
    word_attention_methods,
)
from pixelkit.analysis.lens import LogitLens, final_norm, logit_lens
from pixelkit.analysis.prompts import PromptedMask, attention_prompts, word_masks
from pixelkit.analysis.shapes import (
    DEFAULT_METHODS,
    TEXTS,
    Agreement,
    LensShare,
    ShapesSplit,
    agreement,
    lens_share,
    location_words,
    object_word_indices,
    shapes_split,
)

__all__ = [
    "DEFAULT_METHODS",
    "HEADS",
    "LAYERS",
    "TEXTS",
    "Agreement",
    "AttentionPass",
    "LensShare",
    "LogitLens",
    "PromptedMask",
    "ShapesSplit",
    "WordMaps",
    "agreement",
    "attention_pass",
    "attention_prompts",
    "cell_centres",
    "combine_heads",
    "eager_attention",
    "encoder_decoder_rollout",
    "final_norm",
    "head_weights",
    "lens_share",
    "location_words",
    "logit_lens",
    "object_word_indices",
    "rollout",
    "shapes_split",
    "visible_cells",
    "word_attention",
    "word_attention_methods",
    "word_masks",
]

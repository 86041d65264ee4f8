"""What a run is conditioned on, from its config: labels, caption tokens or layout tokens.

* class-conditional runs (``model.num_classes`` > 0): ``{"label": (N,)}``, null condition the class
  ``num_classes``;
* caption runs (``model.context='caption'``): ``{"tokens": (N, context_len)}`` from the run's word
  tokenizer (its vocabulary built from the training captions, saved as ``vocab.json``), null condition
  the empty caption;
* layout runs (``model.context='layout'``): ``{"tokens": ...}`` of the boxes (``text.LayoutTokenizer``),
  null condition the empty layout.
"""

from __future__ import annotations

import numpy as np

from sde_lib import text
from sde_lib.data import canvas, load_captions, load_labels, load_layouts


def tokenizer_for(config):
    """The run's tokenizer (None for runs without token conditioning); a function of the data and config."""
    m, d = config.model, config.data
    if m.context == "caption":
        return text.WordTokenizer.build(load_captions(d, "train"), m.context_len)
    if m.context == "layout":
        tok = text.LayoutTokenizer(len(canvas.SPECS[d.dataset].class_names), canvas.MAX_OBJECTS)
        if m.context_len != tok.max_len:
            raise ValueError(f"config.model.context_len must be {tok.max_len} for layouts (1 + 5 tokens a box), "
                             f"got {m.context_len}")
        return tok
    return None


def vocab_size(config) -> int:
    tok = tokenizer_for(config)
    return 0 if tok is None else tok.vocab_size


def condition_arrays(config, split: str, tokenizer=None) -> dict[str, np.ndarray]:
    """Per-example condition arrays of ``split`` (``{}`` for unconditional runs)."""
    m, d = config.model, config.data
    if m.num_classes:
        return {"label": load_labels(d, split)}
    if m.context == "caption":
        ids, unknown = tokenizer.encode_batch(load_captions(d, split))
        if unknown:  # the test split's captions come from the same templates; a new word is a data change
            raise ValueError(f"{d.dataset} {split} captions hold words outside the vocabulary: {unknown[:5]}")
        return {"tokens": ids}
    if m.context == "layout":
        return {"tokens": tokenizer.encode_batch(load_layouts(d, split))}
    return {}


def null_condition(config, tokenizer=None):
    """One null condition (no batch axis), or None for unconditional runs."""
    m = config.model
    if m.num_classes:
        return {"label": np.int32(m.num_classes)}
    if m.context != "none":
        return {"tokens": tokenizer.null()}
    return None

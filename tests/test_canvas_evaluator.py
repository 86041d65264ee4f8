"""The canvas evaluator says no where a canvas does not show its caption: objects swapped between their
slots, an empty canvas, an extra object, an object moved or of another class. The exact check
(``data.canvas.satisfies``) on slot labels, and the trained slot classifier on pixels."""

import importlib.util
import os

import numpy as np
import pytest

from sde_lib.data import canvas
from sde_lib.metrics.canvas import SlotClassifierConfig, get_evaluator

SPEC = canvas.SPECS["canvas_digits"]


def test_the_exact_check_rejects_every_other_canvas():
    for caption, right, wrongs in [
        ("a 3 at the top left", [3, -1, -1, -1], [[-1, 3, -1, -1], [4, -1, -1, -1], [3, 7, -1, -1], [-1] * 4]),
        ("a 3 left of a 7", [3, 7, -1, -1], [[7, 3, -1, -1], [3, -1, 7, -1], [3, 7, 2, -1], [3, -1, -1, -1]]),
        ("a 3 above a 7", [-1, 3, -1, 7], [[-1, 7, -1, 3], [3, 7, -1, -1], [-1, 3, 7, -1]]),
    ]:
        assert canvas.satisfies(caption, np.array(right), SPEC)
        assert not any(canvas.satisfies(caption, np.array(w), SPEC) for w in wrongs), caption


def _block(x, slot):
    r, c = divmod(slot, 2)
    return x[:, 8 * r:8 * r + 8, 8 * c:8 * c + 8]


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    # Two epochs instead of six: enough to read slots; the metric's own cached evaluator is the default one.
    return get_evaluator("canvas_digits", SlotClassifierConfig(epochs=2), cache_dir=str(tmp_path_factory.mktemp("ev")))


@pytest.mark.slow
def test_the_slot_classifier_rejects_canvases_that_do_not_show_their_caption(evaluator):
    x, captions, layouts = canvas.canvases("canvas_digits", "test")
    x, captions, slots = x[:600], captions[:600], canvas.slot_labels(layouts[:600])
    assert np.mean(evaluator.adherence(x, captions)) > 0.9  # the ceiling on real canvases

    two = [i for i in range(len(x)) if (slots[i] >= 0).sum() == 2 and len(set(slots[i][slots[i] >= 0])) == 2]
    swapped = x[two].copy()  # the two objects trade places: right words, wrong order
    for k, i in enumerate(two):
        a, b = np.flatnonzero(slots[i] >= 0)
        swapped[k:k + 1, 8 * (a // 2):8 * (a // 2) + 8, 8 * (a % 2):8 * (a % 2) + 8] = _block(x[i:i + 1], b)
        swapped[k:k + 1, 8 * (b // 2):8 * (b // 2) + 8, 8 * (b % 2):8 * (b % 2) + 8] = _block(x[i:i + 1], a)
    assert len(two) > 100 and np.mean(evaluator.adherence(swapped, [captions[i] for i in two])) < 0.1

    one = [i for i in range(len(x)) if (slots[i] >= 0).sum() == 1]
    extra = x[one].copy()  # a second object (another canvas's digit) in an empty slot
    donor = x[two[0]:two[0] + 1]
    for k, i in enumerate(one):
        empty = int(np.flatnonzero(slots[i] < 0)[0])
        full = int(np.flatnonzero(slots[two[0]] >= 0)[0])
        extra[k:k + 1, 8 * (empty // 2):8 * (empty // 2) + 8, 8 * (empty % 2):8 * (empty % 2) + 8] = _block(donor, full)
    assert len(one) > 100 and np.mean(evaluator.adherence(extra, [captions[i] for i in one])) < 0.1
    moved = np.zeros_like(x[one])  # the one object in the next slot instead of its own
    for k, i in enumerate(one):
        s0 = int(np.flatnonzero(slots[i] >= 0)[0])
        s1 = (s0 + 1) % 4
        moved[k:k + 1, 8 * (s1 // 2):8 * (s1 // 2) + 8, 8 * (s1 % 2):8 * (s1 % 2) + 8] = _block(x[i:i + 1], s0)
    assert np.mean(evaluator.adherence(moved, [captions[i] for i in one])) < 0.1
    assert not evaluator.adherence(np.zeros_like(x[:100]), captions[:100]).any()  # an empty canvas shows nothing


@pytest.mark.parametrize("name", sorted(canvas.SPECS))
def test_the_figure_prompts_are_captions_of_their_canvas(name):
    """evaluate_canvas.py's grid: each prompt, in the canvas's own words, is shown exactly by the boxes it
    gives a layout run (the digits' '3' is no Fashion-MNIST class)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "evaluate_canvas.py")
    spec = importlib.util.spec_from_file_location("evaluate_canvas_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    prompts = script.grid_prompts(name)
    assert len(set(prompts)) == len(script.PROMPT_OBJECTS)
    for prompt in prompts:
        slots = canvas.slot_labels(script._layout_of(prompt, name)[None].astype(np.float32))[0]
        assert canvas.satisfies(prompt, slots, canvas.SPECS[name]), (prompt, slots)

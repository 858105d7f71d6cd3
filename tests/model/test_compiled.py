"""The fit models a classifier keeps between runs are bounded by count and by size: a long sweep
that drifts to deep unfreezes must not hold eight deep traced steps (benchmarks/soak.py)."""

import keras

from thaw.model.compiled import FitModels


def dense_stack(layers: int):
    """A model with 2 weights (kernel, bias) per layer."""
    x = inputs = keras.Input((4,))
    for _ in range(layers):
        x = keras.layers.Dense(4)(x)
    return keras.Model(inputs, x)


def test_the_least_recently_used_fit_models_go_first_beyond_the_weight_budget():
    fits = FitModels(max_weights=20)
    first = fits.get("a", lambda: dense_stack(2))  # 4 weights
    fits.get("b", lambda: dense_stack(3))  # 6: 10 in all
    assert fits.get("a", lambda: dense_stack(2)) is first  # kept, and now the most recent
    fits.get("c", lambda: dense_stack(6))  # 12: 22 > 20, so "b" (least recent) goes
    assert fits.keys() == ["a", "c"] and fits.weights() == 16
    assert fits.get("a", lambda: dense_stack(2)) is first


def test_a_fit_model_over_the_whole_budget_is_still_kept_alone():
    fits = FitModels(max_weights=20)
    fits.get("a", lambda: dense_stack(2))
    big = fits.get("d", lambda: dense_stack(15))  # 30 weights by itself
    assert fits.keys() == ["d"] and fits.get("d", lambda: None) is big


def test_only_the_weights_a_fit_model_trains_count():
    fits = FitModels(max_weights=10)
    frozen = dense_stack(4)  # 8 weights, 2 of them trained
    for layer in frozen.layers[1:4]:
        layer.trainable = False
    fits.get("a", lambda: frozen)
    fits.get("b", lambda: dense_stack(4))  # 8 trained: 10 in all, within the budget
    assert fits.keys() == ["a", "b"] and fits.weights() == 10
    for layer in frozen.layers:  # unfreezing it later does not change what was counted
        layer.trainable = True
    assert fits.weights() == 10


def test_without_a_budget_only_the_count_bounds_them():
    from thaw.model.compiled import MAX_FIT_MODELS

    fits = FitModels()
    for i in range(MAX_FIT_MODELS + 2):
        fits.get(i, lambda: dense_stack(1))
    assert fits.keys() == list(range(2, MAX_FIT_MODELS + 2))


def test_a_lower_count_bound_drops_the_least_recently_used_at_once():
    fits = FitModels(max_models=3)
    for key in "abc":
        fits.get(key, lambda: dense_stack(1))
    fits.get("a", lambda: dense_stack(1))  # now the most recent
    fits.get("d", lambda: dense_stack(1))  # a fourth: "b" goes
    assert fits.keys() == ["c", "a", "d"]
    fits.bound(1)  # a run with trainer.kept_fit_models=1: nothing older than "d" stays
    assert fits.keys() == ["d"] and fits.weights() == 2
    fits.bound(3)
    fits.get("e", lambda: dense_stack(1))
    assert fits.keys() == ["d", "e"]

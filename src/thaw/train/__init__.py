"""One run's recipe: freeze, train the head, unfreeze, fine-tune, save, evaluate; with the feature
cache, compiled-step reuse, checkpoints and the run record behind it."""

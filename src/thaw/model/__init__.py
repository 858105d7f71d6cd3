"""The classifier: a keras.applications backbone, a dense head, which blocks to unfreeze, the
optimizer, and loading a saved model for inference."""

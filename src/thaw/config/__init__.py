"""Configuration: the typed schema Hydra composes into, its checks, and where files are found.
Never imports TensorFlow."""

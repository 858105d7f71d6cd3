"""Images in: folders scanned and decoded (Pillow), splits, augmentation draws, memory and disk
limits.
Scanning never imports TensorFlow."""

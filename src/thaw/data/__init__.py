"""Images in: folders scanned (Pillow, no TensorFlow), decoded once, served as tf.data pipelines;
augmentation draws; memory and disk limits. The names below are the package's API."""

from thaw.data.load import load
from thaw.data.pipeline import epoch_batches, in_order, rows, to_tf, train_epochs
from thaw.data.scan import scan_folder, sniff_image
from thaw.data.sources import load_synthetic
from thaw.data.splits import (
    IMAGE_EXTENSIONS,
    Dataset,
    FileSplit,
    FolderScan,
    Split,
    size_text,
    with_val_in_train,
)
from thaw.data.state import DataState, Limits

__all__ = [
    "IMAGE_EXTENSIONS",
    "Limits",
    "DataState",
    "Dataset",
    "FileSplit",
    "FolderScan",
    "Split",
    "epoch_batches",
    "in_order",
    "load",
    "load_synthetic",
    "rows",
    "scan_folder",
    "size_text",
    "sniff_image",
    "to_tf",
    "train_epochs",
    "with_val_in_train",
]

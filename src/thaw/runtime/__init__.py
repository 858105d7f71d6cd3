"""What every command needs around a run: atomic outputs, interrupts, TensorFlow start-up,
tracking."""

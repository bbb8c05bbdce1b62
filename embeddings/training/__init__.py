"""Encoder training: fine-tuning with a metric-learning loss, and encoders at other input sizes."""

from embeddings.training.inputs import with_input_size

__all__ = ["with_input_size"]

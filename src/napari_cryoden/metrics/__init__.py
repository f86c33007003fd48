"""Image-quality metrics against a reference (no Qt)."""

from .image import image_metrics, summarize

__all__ = ["image_metrics", "summarize"]

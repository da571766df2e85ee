"""Measuring and showing: image-quality metrics and figures."""

"""MMGT: motion-mask guided two-stage talking-body generation, as a real-time engine.

Subpackages: ``keypoints`` (134-point layout, extractor, pose images), ``masks`` (Algorithm 1),
``audio`` (decoding, features), ``drivers`` (audio → keypoints), ``renderers`` (keypoints → RGB).
"""

__version__ = "0.1.0"

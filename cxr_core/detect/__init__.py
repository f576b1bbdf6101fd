"""Chest X-ray abnormality detector (VinBigData 14 classes + TBX11K tuberculosis) on ultralytics YOLO.

Research preview: see docs/detector.md and weights/detector.json for what it was trained on.
"""

from cxr_core.detect.predict import Box, class_colour, detect, draw_boxes, load_detector

__all__ = ["Box", "class_colour", "detect", "draw_boxes", "load_detector"]

"""The one box type: an axis-aligned rectangle in pixels of one image, with what it marks.

A detector finding (`detect.predict`), a radiologist's ground-truth box (`detect.prepare`) and
every box the app draws or a report lists are this class, so one object travels from the detector
to the viewer, the PDF and the DICOM SR without conversion. Which image's pixels (original file
or a stored copy) is the caller's to know; the library keeps findings in ORIGINAL-image pixels.

Crop regions handed to the classifier (`preprocess.Region`) are plain integer tuples: they mark
no finding and are stored in cards as lists.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Box:
    """x1/y1 are the far edges (exclusive for integer pixels); `confidence` is 1.0 for a radiologist's box."""

    x0: float
    y0: float
    x1: float
    y1: float
    class_id: int = -1
    label: str = ""
    confidence: float = 1.0
    validated: bool = False  # the class passed the detector card's validation (AP) on held-out films

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    def scaled(self, sx: float, sy: float) -> Box:
        """The same finding in an image resized by (sx, sy)."""
        return replace(self, x0=self.x0 * sx, y0=self.y0 * sy, x1=self.x1 * sx, y1=self.y1 * sy)

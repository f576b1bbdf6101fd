"""The gate in front of the classifier: is this input good enough, and is it a chest X-ray at all?

`quality.assess(image) -> QualityReport` (contrast, exposure, blur, size, film type, and the
not-a-chest-X-ray score of `ood`) decides whether the classifier may answer; `ood_inputs` holds
the probe images that measure the not-a-CXR check (only its evaluation and the tests use them).
`cxr_core.quality` and `cxr_core.ood` are the same modules under their older names.
"""

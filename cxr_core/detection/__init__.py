"""`cxr_core.detection` is `cxr_core.detect` under its older name (the same module objects).

Kept because `from cxr_core import detection`, `cxr_core.detection.detect` (now `detect.predict`),
`cxr_core.detection.evaluate` (now `detect.val`) and `python -m cxr_core.detection ...` are in
people's scripts. Importing this registers every old submodule name for the new module, so a patch
or a class (`Box`) is one object whichever name it was reached by.
"""

import importlib
import sys

_NAMES = {"detect": "predict", "evaluate": "val", "prepare": "prepare", "train": "train", "figures": "figures"}
_package = importlib.import_module("cxr_core.detect")
for _old, _new in _NAMES.items():
    _module = importlib.import_module(f"cxr_core.detect.{_new}")
    sys.modules[f"{__name__}.{_old}"] = _module
    if not hasattr(_package, _old):  # `detect` stays the function, as it always was
        setattr(_package, _old, _module)
sys.modules[__name__] = _package

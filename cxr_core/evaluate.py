"""`cxr_core.evaluate` is `cxr_core.classify.val` (the same module object; see cxr_core/_alias.py).

Kept because `from cxr_core import evaluate` and `python -m cxr_core.evaluate ...` are in people's scripts.
"""

from cxr_core._alias import alias

alias(__name__, "cxr_core.classify.val")

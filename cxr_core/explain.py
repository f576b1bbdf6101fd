"""`cxr_core.explain` is `cxr_core.classify.explain` (the same module object; see cxr_core/_alias.py).

Kept because `from cxr_core import explain` and `python -m cxr_core.explain ...` are in people's scripts.
"""

from cxr_core._alias import alias

alias(__name__, "cxr_core.classify.explain")

"""`cxr_core.train` is `cxr_core.classify.train` (the same module object; see cxr_core/_alias.py).

Kept because `from cxr_core import train` and `python -m cxr_core.train ...` are in people's scripts.
"""

from cxr_core._alias import alias

alias(__name__, "cxr_core.classify.train")

"""`cxr_core.quality` is `cxr_core.gate.quality` (the same module object; see cxr_core/_alias.py).

Kept because `from cxr_core import quality` and `python -m cxr_core.quality ...` are in people's scripts.
"""

from cxr_core._alias import alias

alias(__name__, "cxr_core.gate.quality")

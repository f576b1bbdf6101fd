"""`cxr_core.ood` is `cxr_core.gate.ood` (the same module object; see cxr_core/_alias.py).

Kept because `from cxr_core import ood` and `python -m cxr_core.ood ...` are in people's scripts.
"""

from cxr_core._alias import alias

alias(__name__, "cxr_core.gate.ood")

"""`cxr_core.predict` is `cxr_core.classify.predict_files` (the same module object; see cxr_core/_alias.py).

Kept because `from cxr_core import predict` and `python -m cxr_core.predict ...` are in people's scripts.
"""

from cxr_core._alias import alias

alias(__name__, "cxr_core.classify.predict_files")

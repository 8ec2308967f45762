# Run in the main interpreter: imports the extension module ``name`` there before a
# subinterpreter loads it, with the entries of the loading interpreter's ``sys.path``
# (``path``) that the main one lacks appended to its own.

import sys
if name not in sys.modules:
    for entry in path:
        if entry not in sys.path:
            sys.path.append(entry)
    import importlib
    importlib.import_module(name)
    # hashlib calls _hashlib's constructors with keywords when it is imported: doing that
    # here first gives their cached keyword tuples to the main interpreter (3.12 before
    # 3.12.4 caches them in whichever interpreter calls first, python/cpython#119213).
    if name == '_hashlib':
        import hashlib

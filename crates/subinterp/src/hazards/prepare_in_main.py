# Run in a new subinterpreter: wraps its extension module loader so that the main
# interpreter imports each extension module first, or only those named in ``only`` when it
# is a set. Built-in modules are left alone: single-phase built-ins such as
# ``faulthandler`` load in isolated interpreters only while the main interpreter has not
# imported them (python/cpython#119450), and test runners need them.
#
# Given: ``only`` (None for every extension module, else a list of names).

def _text(entry):
    # A sys.path entry the main interpreter can be given: UTF-8 text (a directory name
    # with surrogate escapes is left out).
    if not isinstance(entry, str):
        return False
    try:
        entry.encode('utf-8')
    except UnicodeEncodeError:
        return False
    return True


def _wrap(only):
    import sys, subinterp
    external = sys.modules['_frozen_importlib_external']
    prepare = subinterp._prepare_in_main
    create = external.ExtensionFileLoader.create_module

    def create_module(
        self, spec, _create=create, _prepare=prepare, _sys=sys, _only=only, _text=_text
    ):
        if _only is None or spec.name in _only:
            _prepare(spec.name, [entry for entry in _sys.path if _text(entry)])
        return _create(self, spec)

    external.ExtensionFileLoader.create_module = create_module
_wrap(None if only is None else frozenset(only))

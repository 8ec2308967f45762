# Evaluated (an expression) in each interpreter of `subinterp run` once its script has
# run: flushes sys.stdout and sys.stderr, as `python` does at exit unless they are None
# or closed, so that a stdout that cannot be written (a full disk) fails the script.
[f.flush() for f in (__import__('sys').stdout, __import__('sys').stderr)
 if f is not None and not getattr(f, 'closed', False)] and None

//! `subinterp._native`, the extension module of the `subinterp` Python package: the
//! library's engine over the CPython that imports it (see `subinterp::package`).

subinterp::python_extension!(PyInit__native);

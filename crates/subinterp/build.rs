//! Finds the Python the crate links against and refuses anything older than 3.12.
//!
//! `pyo3-build-config` locates the interpreter (`PYO3_PYTHON`, which the repository's
//! `.cargo/config.toml` points at `tools/python3` unless you set it yourself). This script
//! checks the version, exposes the `Py_3_13` style cfgs, and adds an rpath to `libpython`
//! so the crate's tests and examples run without `LD_LIBRARY_PATH`.

fn main() {
    let config = pyo3_build_config::get();
    if config.version()
        < (pyo3_build_config::PythonVersion {
            major: 3,
            minor: 12,
        })
    {
        panic!(
            "subinterp needs CPython 3.12 or newer (per-interpreter GIL), but the build found \
             Python {} at {:?}. Set PYO3_PYTHON to a 3.12+ interpreter built with a shared \
             libpython, or install the version named in .python-version.",
            config.version(),
            config.executable().unwrap_or("<unknown>")
        );
    }
    if !config.shared() {
        panic!(
            "subinterp needs a Python built with a shared libpython (--enable-shared); {:?} is static",
            config.executable().unwrap_or("<unknown>")
        );
    }
    pyo3_build_config::use_pyo3_cfgs();
    pyo3_build_config::add_libpython_rpath_link_args();
    if let Some(exe) = config.executable() {
        println!("cargo:rustc-env=SUBINTERP_BUILD_PYTHON={exe}");
    }
    println!(
        "cargo:rustc-env=SUBINTERP_BUILD_PYTHON_VERSION={}",
        config.version()
    );
    println!("cargo:rerun-if-changed=build.rs");
}

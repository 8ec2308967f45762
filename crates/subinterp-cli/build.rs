//! Adds an rpath to the `libpython` the library links against, so the binary runs
//! without `LD_LIBRARY_PATH`, and tells the tests which Python that is.
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    let config = pyo3_build_config::get();
    if let Some(exe) = config.executable() {
        println!("cargo:rustc-env=SUBINTERP_BUILD_PYTHON={exe}");
    }
    println!(
        "cargo:rustc-env=SUBINTERP_BUILD_PYTHON_VERSION={}",
        config.version()
    );
    println!("cargo:rerun-if-changed=build.rs");
}

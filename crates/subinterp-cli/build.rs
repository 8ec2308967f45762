//! Adds an rpath to the `libpython` the library links against, so the binary and the
//! tests run without `LD_LIBRARY_PATH`, as every crate that depends on `subinterp` does
//! (`subinterp_build::link`), and tells the tests which Python that is.
fn main() {
    subinterp_build::link();
    if let Some(python) = subinterp_build::python() {
        println!(
            "cargo:rustc-env=SUBINTERP_BUILD_PYTHON={}",
            python.display()
        );
    }
    // Published by `subinterp`'s build script, as the library's directory is.
    if let Ok(version) = std::env::var("DEP_SUBINTERP_VERSION") {
        println!("cargo:rustc-env=SUBINTERP_BUILD_PYTHON_VERSION={version}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}

//! Adds an rpath to the `libpython` the library links against, so the binary runs
//! without `LD_LIBRARY_PATH`.
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo:rerun-if-changed=build.rs");
}

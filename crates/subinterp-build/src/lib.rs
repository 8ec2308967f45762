//! Build-script helper for a crate that depends on [`subinterp`]: one line in its
//! `build.rs` lets its binaries, tests and examples find `libpython` without
//! `LD_LIBRARY_PATH`.
//!
//! A library's build script cannot add linker arguments to the crates that depend on it,
//! so `subinterp`'s own rpath to `libpython` stops at its own tests. Its build script
//! publishes where `libpython` is instead (`links = "subinterp"`), which cargo hands to
//! the build script of every crate that depends on `subinterp` directly
//! (`DEP_SUBINTERP_LIBDIR`); [`link`] turns it into an rpath there.
//!
//! ```toml
//! [dependencies]
//! subinterp = { path = "../subinterp/crates/subinterp" }
//!
//! [build-dependencies]
//! subinterp-build = { path = "../subinterp/crates/subinterp-build" }
//! ```
//!
//! ```no_run
//! // build.rs
//! fn main() {
//!     subinterp_build::link();
//! }
//! ```
//!
//! [`subinterp`]: https://docs.rs/subinterp
#![forbid(unsafe_code)]
// The example is a whole `build.rs`, `fn main` included.
#![allow(clippy::needless_doctest_main)]
#![warn(missing_docs)]

use std::path::PathBuf;

/// Adds an rpath to the `libpython` that `subinterp` was built against to the binaries,
/// tests, examples and benchmarks of the calling crate. Call it from the `build.rs` of a
/// crate that depends on `subinterp` directly (in `[dependencies]`).
///
/// Without that dependency there is nothing to link against: the build ends with a
/// message saying so (no panic, no backtrace).
pub fn link() {
    match libdir() {
        Some(dir) => println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display()),
        None => {
            eprintln!(
                "\nsubinterp_build::link(): this crate does not depend on `subinterp` directly \
                 (cargo gave its build script no DEP_SUBINTERP_LIBDIR).\n\
                 Add it to [dependencies] of the crate whose build.rs calls link():\n\
                 \x20   subinterp = {{ path = \"/path/to/subinterp/crates/subinterp\" }}\n"
            );
            std::process::exit(1);
        }
    }
}

/// The directory of the `libpython` that `subinterp` was built against, when called
/// from the build script of a crate that depends on `subinterp` directly.
pub fn libdir() -> Option<PathBuf> {
    std::env::var_os("DEP_SUBINTERP_LIBDIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
}

/// The Python interpreter `subinterp` was built against (`PYO3_PYTHON`, or the one found),
/// from the same build script.
pub fn python() -> Option<PathBuf> {
    std::env::var_os("DEP_SUBINTERP_PYTHON")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
}

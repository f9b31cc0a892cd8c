//! Link-time facts about libtorch that the binary needs at run time.
//!
//! - rpath: torch-sys reports the lib dir of the libtorch it linked (the venv's `torch/lib`);
//!   recording it as an rpath lets `summerd` (and the test binaries) run without
//!   LD_LIBRARY_PATH.
//! - CUDA: nothing in summerd references a symbol of `libtorch_cuda.so`, so the linker's
//!   `--as-needed` would drop it and `tch::Cuda::is_available()` would be false even on a GPU
//!   machine. It is linked explicitly, with `--no-as-needed`, whenever libtorch ships it.
//! - the libtorch version, read from the `torch/version.py` beside that lib dir, for
//!   `summerd version`.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:rustc-env=SUMMERD_LIBTORCH_VERSION=unknown");
        println!("cargo:rustc-env=SUMMERD_LIBTORCH_LIB=unknown");
        return;
    };
    let lib = Path::new(&lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-env=SUMMERD_LIBTORCH_LIB={}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        println!("cargo:rustc-env=SUMMERD_LIBTORCH_CUDA=linked");
    } else {
        println!("cargo:rustc-env=SUMMERD_LIBTORCH_CUDA=absent");
    }
    let version_py = lib.join("../version.py");
    println!("cargo:rerun-if-changed={}", version_py.display());
    let version = std::fs::read_to_string(&version_py)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("__version__"))
                .map(|v| {
                    v.trim_matches(|c: char| c == ' ' || c == '=' || c == '\'' || c == '"')
                        .to_string()
                })
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SUMMERD_LIBTORCH_VERSION={version}");
}

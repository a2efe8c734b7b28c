//! The provider is the only artifact that links libibverbs (it calls
//! `verbs_register_driver_34` and the context helpers).

fn main() {
    println!("cargo:rustc-link-lib=ibverbs");
    println!("cargo:rerun-if-changed=build.rs");
}

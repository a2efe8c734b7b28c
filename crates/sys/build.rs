//! Generates Rust declarations for the stock `<infiniband/verbs.h>` and for
//! the private provider ABI declared in `include/flowverbs_pabi34.h`.
//! The layouts we rely on are asserted at compile time in `src/lib.rs`.
//! No link directive: only the provider links libibverbs.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=include/flowverbs_pabi34.h");
    println!("cargo:rerun-if-changed=build.rs");

    let bindings = bindgen::Builder::default()
        .header("include/flowverbs_pabi34.h")
        .allowlist_type("ibv_.*")
        .allowlist_type("verbs_.*")
        .allowlist_type("fv_.*")
        .allowlist_var("IBV_.*")
        .allowlist_function("verbs_register_driver_34")
        .allowlist_function("_verbs_init_and_alloc_context")
        .allowlist_function("verbs_uninit_context")
        .allowlist_function("verbs_set_ops")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .generate()
        .expect("bindgen over <infiniband/verbs.h> failed: is libibverbs-dev installed?");

    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("verbs_bindings.rs");
    bindings.write_to_file(out).expect("writing bindings");
}

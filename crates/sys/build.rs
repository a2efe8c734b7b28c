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
        // The public verbs the provider calls on a real device (semi mode
        // over a NIC); the data-path verbs are inline functions in
        // verbs.h, reached through the real context's ops instead.
        .allowlist_function("ibv_get_device_list")
        .allowlist_function("ibv_free_device_list")
        .allowlist_function("ibv_get_device_name")
        .allowlist_function("ibv_open_device")
        .allowlist_function("ibv_close_device")
        .allowlist_function("ibv_alloc_pd")
        .allowlist_function("ibv_dealloc_pd")
        .allowlist_function("ibv_reg_mr")
        .allowlist_function("ibv_reg_mr_iova2")
        .allowlist_function("ibv_dereg_mr")
        .allowlist_function("ibv_create_cq")
        .allowlist_function("ibv_destroy_cq")
        .allowlist_function("ibv_resize_cq")
        .allowlist_function("ibv_create_qp")
        .allowlist_function("ibv_modify_qp")
        .allowlist_function("ibv_destroy_qp")
        .allowlist_function("ibv_create_comp_channel")
        .allowlist_function("ibv_destroy_comp_channel")
        .allowlist_function("ibv_get_cq_event")
        .allowlist_function("ibv_ack_cq_events")
        .allowlist_function("ibv_create_srq")
        .allowlist_function("ibv_create_ah")
        .allowlist_function("ibv_destroy_ah")
        .allowlist_function("ibv_destroy_srq")
        .allowlist_function("ibv_modify_srq")
        .allowlist_function("ibv_query_qp")
        .allowlist_function("ibv_get_async_event")
        .allowlist_function("ibv_ack_async_event")
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

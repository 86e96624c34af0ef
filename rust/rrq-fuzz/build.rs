//! Tells the fuzzer its optimization level: the per-input time limit of
//! Fault row F30 (docs/guarantees.md) is meant for optimized code, and an unoptimized build
//! gets a longer default one (see `harness::default_timeout`).

fn main() {
    let level = std::env::var("OPT_LEVEL").unwrap_or_else(|_| "0".to_owned());
    println!("cargo:rustc-env=RRQ_FUZZ_OPT_LEVEL={level}");
    println!("cargo:rerun-if-env-changed=OPT_LEVEL");
}

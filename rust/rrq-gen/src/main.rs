//! Regenerates `rrq-proto/src/gen/` from `proto/rrq/v1/*.proto`.
//!
//! Run from anywhere inside the workspace as `cargo run -p rrq-gen` (the
//! lead's `make gen` does, then checks `git diff`). The output is committed so
//! that no crate needs a build script or protoc: a build.rs that reads
//! `../proto` would break the Python wheel's sdist build.

use std::path::PathBuf;

use anyhow::Context as _;

/// Proto files to compile, relative to the proto root.
const PROTOS: [&str; 2] = ["rrq/v1/job.proto", "rrq/v1/runner.proto"];

fn main() -> anyhow::Result<()> {
    // CARGO_MANIFEST_DIR is rust/rrq-gen at compile time; resolving from it
    // (not from the current directory) makes the command work from any cwd.
    let gen_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let workspace = gen_dir
        .parent()
        .context("rrq-gen must live inside the rust/ workspace")?;
    let proto_root = workspace.join("../proto");
    let out_dir = workspace.join("rrq-proto/src/gen");

    let fds = protox::compile(PROTOS, [&proto_root])
        .with_context(|| format!("compiling protos under {}", proto_root.display()))?;

    // Stale outputs of removed packages must not linger in the committed tree.
    if out_dir.exists() {
        std::fs::remove_dir_all(&out_dir)
            .with_context(|| format!("removing {}", out_dir.display()))?;
    }
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The rpc is named `Connect`, so the client's generated `connect`
        // method would clash with tonic's `connect(dst)` transport constructor
        // (E0592). Without the transport helpers, clients build a `Channel`
        // themselves and call `RunnerServiceClient::new(channel)`.
        .build_transport(false)
        .out_dir(&out_dir)
        .compile_fds(fds)
        .context("generating Rust code")?;
    println!("wrote {}", out_dir.display());
    Ok(())
}

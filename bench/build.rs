//! Compiles the peers' schemas: `protoc` (Debian `protobuf-compiler`) for
//! tonic, `capnp` (Debian `capnproto`) for capnp-rpc. `bench/setup.sh`
//! installs both.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::compile_protos("proto/bench.proto")?;
    capnpc::CompilerCommand::new()
        .src_prefix("proto")
        .file("proto/bench.capnp")
        .run()?;
    Ok(())
}

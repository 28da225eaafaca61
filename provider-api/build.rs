fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/provider.proto");
    prost_build::Config::new()
        .btree_map(["."])
        .compile_protos(&["proto/provider.proto"], &["proto"])?;
    Ok(())
}

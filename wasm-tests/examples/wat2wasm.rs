//! Compiles a WebAssembly text module to binary: `wat2wasm <in.wat> <out.wasm>` (used by
//! `make bench` for the null filter of envoy/bench/null-filter.wat).

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        anyhow::bail!("usage: wat2wasm <in.wat> <out.wasm>");
    };
    let binary = wat::parse_file(input)?;
    std::fs::write(output, binary)?;
    Ok(())
}

// Runs a wasm32-wasip1 build of the micro-benchmarks (benches/core.rs) under Node's V8, the engine
// family Envoy runs the filter in:
//   node benches/run-wasm.mjs <core-*.wasm> [benchmark arguments...]
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import { argv, exit } from "node:process";

if (argv.length < 3) {
  console.error("usage: node benches/run-wasm.mjs <core.wasm> [--quick] [--markdown] [filter]");
  exit(2);
}
const wasi = new WASI({ version: "preview1", args: ["core", ...argv.slice(3)], env: {}, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(argv[2]));
// The library's proxy-wasm adapter comes along with its host imports; the benchmarks never call
// them, so they are stubs that trap.
const imports = wasi.getImportObject();
for (const { module: from, name, kind } of WebAssembly.Module.imports(module)) {
  if (from !== "wasi_snapshot_preview1" && kind === "function") {
    imports[from] ??= {};
    imports[from][name] = () => {
      throw new Error(`host function ${from}.${name} called`);
    };
  }
}
const instance = await WebAssembly.instantiate(module, imports);
// The library also exports proxy-wasm's `_initialize`, which WASI's `start` refuses next to `_start`.
const { _start, memory } = instance.exports;
exit(wasi.start({ exports: { _start, memory } }));

//! The thin adapter: the only code that talks to the proxy-wasm host.

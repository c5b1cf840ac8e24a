//! The thin adapter: the only code that talks to the proxy-wasm host (Envoy).
//!
//! It turns host events into calls of the pure core and the core's decisions into host actions:
//! [`root`] owns configuration, key fetching on ticks and requests waiting for keys or
//! introspections; [`http`] owns one stream (and the introspection callouts it sends); [`host`]
//! wraps every host call so that none can panic. Nothing here decides.

mod host;
mod http;
mod root;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> { Box::new(root::Root::new(context_id)) });
}}

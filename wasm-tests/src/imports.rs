//! The host functions: proxy-wasm ABI 0.2.1 (`env.proxy_*`) and the WASI preview1 subset Envoy
//! provides (`wasi_snapshot_preview1.*`, also under `wasi_unstable`), with Envoy's return codes.
//! The set is exactly Envoy's: a module importing anything else fails to start here as in Envoy.

use wasmtime::{Caller, Engine, Linker, Module};

use crate::abi::{decode_pairs, encode_pairs, BufferType, LogLevel, MapType, MetricKind};
use crate::callout::CallResult;
use crate::foreign;
use crate::host::{HostEvent, MetricKindKey, PendingCallout, QueueState};
use crate::types::{Headers, LogSource};
use crate::vm::{AfterCall, VmState};
use crate::HarnessError;

type C<'a> = Caller<'a, VmState>;
type R = wasmtime::Result<u32>;

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const BAD_ARGUMENT: u32 = 2;
const INVALID_MEMORY: u32 = 6;
const EMPTY: u32 = 7;
const CAS_MISMATCH: u32 = 8;

// WASI errno values.
const WASI_SUCCESS: u32 = 0;
const WASI_EBADF: u32 = 8;
const WASI_EFAULT: u32 = 21;
const WASI_ENOENT: u32 = 44;
const WASI_ENOSYS: u32 = 52;
const WASI_ENOTSUP: u32 = 58;

/// Foreign functions Envoy registers that the harness does not emulate (calling one is a harness
/// limitation, not a `NotFound`).
const ENVOY_FOREIGN_NOT_EMULATED: &[&str] = &[
    "sign",
    "compress",
    "uncompress",
    "set_envoy_filter_state",
    "clear_route_cache",
    "expr_create",
    "expr_evaluate",
    "expr_delete",
    "declare_property",
];

/// Counts one call of the host function `name` on this VM (`Vm::host_calls`).
/// With a fuel trace on, also records the fuel the module spent since the previous event.
fn count(c: &C, name: &'static str) {
    let d = c.data();
    *d.host_calls.borrow_mut().entry(name).or_insert(0) += 1;
    if let Some(trace) = d.fuel_trace.borrow_mut().as_mut() {
        let fuel = c.get_fuel().unwrap_or(0);
        trace.push((name.to_string(), d.trace_fuel.get().saturating_sub(fuel)));
        d.trace_fuel.set(fuel);
    }
}

fn read(c: &C, ptr: u32, len: u32) -> Option<Vec<u8>> {
    let mem = c.data().memory?;
    let start = ptr as usize;
    let end = start.checked_add(len as usize)?;
    mem.data(c).get(start..end).map(<[u8]>::to_vec)
}

fn write(c: &mut C, ptr: u32, bytes: &[u8]) -> bool {
    let Some(mem) = c.data().memory else { return false };
    let start = ptr as usize;
    let Some(end) = start.checked_add(bytes.len()) else {
        return false;
    };
    match mem.data_mut(&mut *c).get_mut(start..end) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

fn write_u32(c: &mut C, ptr: u32, v: u32) -> bool {
    write(c, ptr, &v.to_le_bytes())
}

fn write_u64(c: &mut C, ptr: u32, v: u64) -> bool {
    write(c, ptr, &v.to_le_bytes())
}

/// Envoy's `copyToPointerSize`: allocate in the module (its `malloc`), copy, and store the
/// pointer and size. Empty data gives a null pointer and size 0 without allocating.
fn give(c: &mut C, data: &[u8], ptr_ptr: u32, size_ptr: u32) -> wasmtime::Result<bool> {
    let len = u32::try_from(data.len()).map_err(|_| wasmtime::Error::msg("host value larger than 4 GiB"))?;
    let addr = if data.is_empty() {
        0
    } else {
        let Some(malloc) = c.data().malloc.clone() else {
            return Ok(false);
        };
        let p = malloc.call(&mut *c, len)?;
        if p == 0 || !write(c, p, data) {
            return Ok(false);
        }
        p
    };
    Ok(write_u32(c, size_ptr, len) && write_u32(c, ptr_ptr, addr))
}

fn give_status(c: &mut C, data: &[u8], ptr_ptr: u32, size_ptr: u32) -> R {
    Ok(if give(c, data, ptr_ptr, size_ptr)? {
        OK
    } else {
        INVALID_MEMORY
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn pairs_to_strings(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(String, String)> {
    pairs.into_iter().map(|(k, v)| (text(&k), text(&v))).collect()
}

// ---- header maps --------------------------------------------------------------------------------

/// Envoy's `getConstMap`: which map is readable from `ctx` now.
fn const_map(d: &VmState, ctx: u32, t: MapType) -> Option<&Headers> {
    match t {
        MapType::HttpCallResponseHeaders => match &d.call_response {
            Some(CallResult::Response { headers, .. }) => Some(headers),
            _ => None,
        },
        MapType::HttpCallResponseTrailers => match &d.call_response {
            Some(CallResult::Response { trailers, .. }) => trailers.as_ref(),
            _ => None,
        },
        MapType::GrpcReceiveInitialMetadata | MapType::GrpcReceiveTrailingMetadata => None,
        _ => {
            let st = d.streams.get(&ctx)?;
            match t {
                MapType::RequestHeaders if st.req.headers_access || st.log_phase => Some(&st.req.headers),
                MapType::RequestTrailers if st.req.trailers_access => st.req.trailers.as_ref(),
                MapType::ResponseHeaders
                    if st.resp.headers_access || (st.log_phase && st.response_started) =>
                {
                    Some(&st.resp.headers)
                }
                MapType::ResponseTrailers if st.resp.trailers_access || st.log_phase => {
                    st.resp.trailers.as_ref()
                }
                _ => None,
            }
        }
    }
}

/// Envoy's `getMap`: which map is writable from `ctx` now.
fn mut_map(d: &mut VmState, ctx: u32, t: MapType) -> Option<&mut Headers> {
    let st = d.streams.get_mut(&ctx)?;
    match t {
        MapType::RequestHeaders if st.req.headers_access => Some(&mut st.req.headers),
        MapType::RequestTrailers if st.req.trailers_access => st.req.trailers.as_mut(),
        MapType::ResponseHeaders if st.resp.headers_access => Some(&mut st.resp.headers),
        MapType::ResponseTrailers if st.resp.trailers_access => st.resp.trailers.as_mut(),
        _ => None,
    }
}

fn map_type(t: u32) -> Option<MapType> {
    MapType::from_code(t)
}

// ---- buffers ------------------------------------------------------------------------------------

enum Buf {
    /// `getBuffer` returned nullptr.
    Missing,
    /// A buffer wrapper with these bytes (possibly empty: a null Envoy buffer reads as empty).
    Bytes(Vec<u8>),
}

fn buffer(d: &VmState, ctx: u32, t: BufferType) -> Buf {
    match t {
        BufferType::HttpRequestBody => match d.streams.get(&ctx) {
            Some(st) if st.req.body_access => Buf::Bytes(st.req.body.clone()),
            _ => Buf::Bytes(Vec::new()),
        },
        BufferType::HttpResponseBody => match d.streams.get(&ctx) {
            Some(st) if st.resp.body_access => Buf::Bytes(st.resp.body.clone()),
            _ => Buf::Bytes(Vec::new()),
        },
        BufferType::HttpCallResponseBody => match &d.call_response {
            Some(CallResult::Response { body, .. }) => Buf::Bytes(body.clone()),
            _ => Buf::Missing,
        },
        BufferType::VmConfiguration => Buf::Bytes(d.config.vm_configuration.clone()),
        BufferType::PluginConfiguration => {
            if d.in_configure {
                Buf::Bytes(d.config.plugin_configuration.clone())
            } else {
                Buf::Missing
            }
        }
        BufferType::DownstreamData
        | BufferType::UpstreamData
        | BufferType::GrpcReceiveBuffer
        | BufferType::CallData => Buf::Bytes(Vec::new()),
    }
}

/// Envoy's `Buffer::copyFrom` on a body: `start == 0` replaces the first `length` bytes with the
/// data; `start >= size` appends; anything else is `BadArgument`.
fn splice(body: &mut Vec<u8>, start: u32, length: u32, data: &[u8]) -> u32 {
    let (start, length) = (start as usize, length as usize);
    if start == 0 {
        let drain = length.min(body.len());
        body.drain(..drain);
        let mut v = data.to_vec();
        v.extend_from_slice(body);
        *body = v;
        OK
    } else if start >= body.len() {
        body.extend_from_slice(data);
        OK
    } else {
        BAD_ARGUMENT
    }
}

// ---- properties ---------------------------------------------------------------------------------

const PROPERTY_TOKENS: &[&str] = &[
    "metadata",
    "request",
    "response",
    "connection",
    "upstream",
    "node",
    "source",
    "destination",
    "listener_direction",
    "listener_metadata",
    "cluster_name",
    "cluster_metadata",
    "route_name",
    "route_metadata",
    "plugin_name",
    "upstream_host_metadata",
    "plugin_root_id",
    "plugin_vm_id",
    "connection_id",
    "filter_state",
];

fn derived_stream_property(st: &crate::stream::StreamState, dotted: &str) -> Option<Vec<u8>> {
    let req = if st.req.headers_access || st.log_phase {
        Some(&st.req.headers)
    } else {
        None
    };
    let header = |name: &str| req.and_then(|h| h.get(name)).map(|v| v.as_bytes().to_vec());
    match dotted {
        "request.path" => header(":path"),
        "request.url_path" => req
            .and_then(|h| h.get(":path"))
            .map(|p| p.split('?').next().unwrap_or("").as_bytes().to_vec()),
        "request.host" => header(":authority"),
        "request.scheme" => header(":scheme"),
        "request.method" => header(":method"),
        "request.id" => header("x-request-id"),
        "request.useragent" => header("user-agent"),
        "request.referer" => header("referer"),
        "response.code" => st.response_code.map(|c| i64::from(c).to_le_bytes().to_vec()),
        "response.code_details" => st.code_details.as_ref().map(|s| s.as_bytes().to_vec()),
        _ => None,
    }
}

/// Envoy's `getProperty`, over what the test set and what the harness derives.
fn property(d: &VmState, ctx: u32, raw_path: &[u8]) -> Option<Vec<u8>> {
    let segments: Vec<String> = raw_path.split(|b| *b == 0).map(text).collect();
    let first = segments.first()?;
    if first.is_empty() && segments.len() == 1 {
        return None;
    }
    let dotted = segments.join(".");
    let stream = d.streams.get(&ctx).filter(|s| s.created);
    if let Some(st) = stream {
        // Properties the module set (filter state `wasm.<path>`) are found by the first segment only.
        if !PROPERTY_TOKENS.contains(&first.as_str()) {
            if let Some(v) = st.module_props.get(first.as_bytes()) {
                return if segments.len() == 1 {
                    Some(v.clone())
                } else {
                    None
                };
            }
        }
        if let Some(v) = st.test_props.get(&dotted) {
            return Some(v.clone());
        }
        if let Some(v) = derived_stream_property(st, &dotted) {
            return Some(v);
        }
    }
    let host = d.host.borrow();
    if let Some(v) = host.properties.get(&dotted) {
        return Some(v.clone());
    }
    match dotted.as_str() {
        "plugin_root_id" => Some(d.config.root_id.as_bytes().to_vec()),
        "plugin_vm_id" => Some(host.options.vm_id.as_bytes().to_vec()),
        "plugin_name" => Some(host.options.plugin_name.as_bytes().to_vec()),
        _ => None,
    }
}

// ---- the linker ---------------------------------------------------------------------------------

/// Names of the module's imports the harness (like Envoy) does not provide.
pub(crate) fn unknown_imports(module: &Module) -> Vec<String> {
    let known = known_imports();
    module
        .imports()
        .filter(|i| !known.iter().any(|(m, n)| *m == i.module() && *n == i.name()))
        .map(|i| format!("{}.{}", i.module(), i.name()))
        .collect()
}

const PROXY_FUNCTIONS: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer_bytes",
    "proxy_get_buffer_status",
    "proxy_set_buffer_bytes",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_header_map_size",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_get_status",
    "proxy_set_effective_context",
    "proxy_call_foreign_function",
    "proxy_done",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "pthread_equal",
];

const WASI_FUNCTIONS: &[&str] = &[
    "fd_write",
    "fd_read",
    "fd_seek",
    "fd_close",
    "fd_fdstat_get",
    "environ_get",
    "environ_sizes_get",
    "args_get",
    "args_sizes_get",
    "clock_time_get",
    "random_get",
    "proc_exit",
    "path_open",
    "fd_prestat_get",
    "fd_prestat_dir_name",
];

fn known_imports() -> Vec<(&'static str, &'static str)> {
    let mut v: Vec<(&str, &str)> = PROXY_FUNCTIONS.iter().map(|n| ("env", *n)).collect();
    for m in ["wasi_snapshot_preview1", "wasi_unstable"] {
        v.extend(WASI_FUNCTIONS.iter().map(|n| (m, *n)));
    }
    v
}

/// A linker with every host function Envoy gives a proxy-wasm 0.2.1 module.
pub(crate) fn linker(engine: &Engine) -> Result<Linker<VmState>, HarnessError> {
    let mut l = Linker::new(engine);
    define_proxy(&mut l).map_err(|e| HarnessError::Module(format!("defining host functions: {e:#}")))?;
    for m in ["wasi_snapshot_preview1", "wasi_unstable"] {
        define_wasi(&mut l, m).map_err(|e| HarnessError::Module(format!("defining WASI: {e:#}")))?;
    }
    Ok(l)
}

/// Every `(module, name)` the linker defines (for the self-test that the list above is exact).
#[cfg(test)]
pub(crate) fn defined_names(
    linker: &Linker<VmState>,
    store: &mut wasmtime::Store<VmState>,
) -> Vec<(String, String)> {
    linker
        .iter(store)
        .map(|(m, n, _)| (m.to_string(), n.to_string()))
        .collect()
}

#[allow(clippy::too_many_lines)]
fn define_proxy(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_log", |c: C, level: u32, ptr: u32, size: u32| -> R {
        count(&c, "proxy_log");
        let Some(level) = LogLevel::from_code(level) else {
            return Ok(BAD_ARGUMENT);
        };
        let Some(msg) = read(&c, ptr, size) else {
            return Ok(INVALID_MEMORY);
        };
        c.data().log(level, LogSource::Proxy, text(&msg));
        Ok(OK)
    })?;
    l.func_wrap("env", "proxy_get_log_level", |mut c: C, ptr: u32| -> R {
        count(&c, "proxy_get_log_level");
        let level = c.data().host.borrow().options.log_level as u32;
        Ok(if write_u32(&mut c, ptr, level) {
            OK
        } else {
            INVALID_MEMORY
        })
    })?;
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C, ptr: u32| -> R {
            count(&c, "proxy_get_current_time_nanoseconds");
            let now = c.data().host.borrow().now_ns;
            Ok(if write_u64(&mut c, ptr, now) {
                OK
            } else {
                INVALID_MEMORY
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C, period: u32| -> R {
            count(&c, "proxy_set_tick_period_milliseconds");
            let d = c.data_mut();
            let now = d.host.borrow().now_ns;
            d.tick_period_ms = period;
            d.next_tick_ns = if period > 0 {
                Some(now + u64::from(period) * 1_000_000)
            } else {
                None
            };
            Ok(OK)
        },
    )?;

    // ---- buffers ----
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C, t: u32, start: u32, length: u32, ptr_ptr: u32, size_ptr: u32| -> R {
            count(&c, "proxy_get_buffer_bytes");
            let Some(t) = BufferType::from_code(t) else {
                return Ok(BAD_ARGUMENT);
            };
            let ctx = c.data().context();
            let bytes = match buffer(c.data(), ctx, t) {
                Buf::Missing => return Ok(NOT_FOUND),
                Buf::Bytes(b) => b,
            };
            let start = start as usize;
            if start >= bytes.len() {
                return Ok(OK);
            }
            let end = start.saturating_add(length as usize).min(bytes.len());
            match bytes.get(start..end) {
                Some(slice) if !slice.is_empty() => give_status(&mut c, slice, ptr_ptr, size_ptr),
                _ => Ok(OK),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: C, t: u32, len_ptr: u32, flags_ptr: u32| -> R {
            count(&c, "proxy_get_buffer_status");
            let Some(t) = BufferType::from_code(t) else {
                return Ok(BAD_ARGUMENT);
            };
            let ctx = c.data().context();
            let len = match buffer(c.data(), ctx, t) {
                Buf::Missing => return Ok(NOT_FOUND),
                Buf::Bytes(b) => b.len() as u32,
            };
            Ok(
                if write_u32(&mut c, len_ptr, len) && write_u32(&mut c, flags_ptr, 0) {
                    OK
                } else {
                    INVALID_MEMORY
                },
            )
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C, t: u32, start: u32, length: u32, data_ptr: u32, data_size: u32| -> R {
            count(&c, "proxy_set_buffer_bytes");
            let Some(t) = BufferType::from_code(t) else {
                return Ok(BAD_ARGUMENT);
            };
            let ctx = c.data().context();
            let Some(data) = read(&c, data_ptr, data_size) else {
                return Ok(INVALID_MEMORY);
            };
            let d = c.data_mut();
            let Some(st) = d.streams.get_mut(&ctx) else {
                return Ok(NOT_FOUND);
            };
            Ok(match t {
                BufferType::HttpRequestBody if st.req.body_access => {
                    splice(&mut st.req.body, start, length, &data)
                }
                BufferType::HttpResponseBody if st.resp.body_access => {
                    splice(&mut st.resp.body, start, length, &data)
                }
                _ => NOT_FOUND,
            })
        },
    )?;

    // ---- header maps ----
    l.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C, t: u32, ptr_ptr: u32, size_ptr: u32| -> R {
            count(&c, "proxy_get_header_map_pairs");
            let Some(t) = map_type(t) else {
                return Ok(BAD_ARGUMENT);
            };
            let ctx = c.data().context();
            let pairs = const_map(c.data(), ctx, t)
                .map(Headers::to_vec)
                .unwrap_or_default();
            if pairs.is_empty() {
                return give_status(&mut c, &[], ptr_ptr, size_ptr);
            }
            let bytes = encode_pairs(&pairs);
            give_status(&mut c, &bytes, ptr_ptr, size_ptr)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C, t: u32, ptr: u32, size: u32| -> R {
            count(&c, "proxy_set_header_map_pairs");
            let Some(t) = map_type(t) else {
                return Ok(BAD_ARGUMENT);
            };
            let Some(bytes) = read(&c, ptr, size) else {
                return Ok(INVALID_MEMORY);
            };
            let pairs = pairs_to_strings(decode_pairs(&bytes));
            let ctx = c.data().context();
            match mut_map(c.data_mut(), ctx, t) {
                Some(map) => {
                    map.replace_all(pairs);
                    Ok(OK)
                }
                None => Ok(BAD_ARGUMENT),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C, t: u32, kptr: u32, ksize: u32, vptr_ptr: u32, vsize_ptr: u32| -> R {
            count(&c, "proxy_get_header_map_value");
            let Some(t) = map_type(t) else {
                return Ok(BAD_ARGUMENT);
            };
            let Some(key) = read(&c, kptr, ksize) else {
                return Ok(INVALID_MEMORY);
            };
            let ctx = c.data().context();
            let value = match const_map(c.data(), ctx, t) {
                None => return Ok(BAD_ARGUMENT),
                Some(map) => match map.get(&text(&key)) {
                    None => return Ok(NOT_FOUND),
                    Some(v) => v.as_bytes().to_vec(),
                },
            };
            give_status(&mut c, &value, vptr_ptr, vsize_ptr)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: C, t: u32, kptr: u32, ksize: u32, vptr: u32, vsize: u32| -> R {
            count(&c, "proxy_add_header_map_value");
            let Some(t) = map_type(t) else {
                return Ok(BAD_ARGUMENT);
            };
            let (Some(k), Some(v)) = (read(&c, kptr, ksize), read(&c, vptr, vsize)) else {
                return Ok(INVALID_MEMORY);
            };
            let ctx = c.data().context();
            match mut_map(c.data_mut(), ctx, t) {
                Some(map) => {
                    map.add(&text(&k), &text(&v));
                    Ok(OK)
                }
                None => Ok(BAD_ARGUMENT),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: C, t: u32, kptr: u32, ksize: u32, vptr: u32, vsize: u32| -> R {
            count(&c, "proxy_replace_header_map_value");
            let Some(t) = map_type(t) else {
                return Ok(BAD_ARGUMENT);
            };
            let (Some(k), Some(v)) = (read(&c, kptr, ksize), read(&c, vptr, vsize)) else {
                return Ok(INVALID_MEMORY);
            };
            let ctx = c.data().context();
            match mut_map(c.data_mut(), ctx, t) {
                Some(map) => {
                    map.set(&text(&k), &text(&v));
                    Ok(OK)
                }
                None => Ok(BAD_ARGUMENT),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C, t: u32, kptr: u32, ksize: u32| -> R {
            count(&c, "proxy_remove_header_map_value");
            let Some(t) = map_type(t) else {
                return Ok(BAD_ARGUMENT);
            };
            let Some(k) = read(&c, kptr, ksize) else {
                return Ok(INVALID_MEMORY);
            };
            let ctx = c.data().context();
            match mut_map(c.data_mut(), ctx, t) {
                Some(map) => {
                    map.remove(&text(&k));
                    Ok(OK)
                }
                None => Ok(BAD_ARGUMENT),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: C, t: u32, size_ptr: u32| -> R {
            count(&c, "proxy_get_header_map_size");
            let Some(t) = map_type(t) else {
                return Ok(BAD_ARGUMENT);
            };
            let ctx = c.data().context();
            let size = match mut_map(c.data_mut(), ctx, t) {
                Some(map) => map.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() as u32,
                None => return Ok(BAD_ARGUMENT),
            };
            Ok(if write_u32(&mut c, size_ptr, size) {
                OK
            } else {
                INVALID_MEMORY
            })
        },
    )?;

    // ---- properties ----
    l.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C, pptr: u32, psize: u32, vptr_ptr: u32, vsize_ptr: u32| -> R {
            count(&c, "proxy_get_property");
            let Some(path) = read(&c, pptr, psize) else {
                return Ok(INVALID_MEMORY);
            };
            let ctx = c.data().context();
            match property(c.data(), ctx, &path) {
                Some(v) => give_status(&mut c, &v, vptr_ptr, vsize_ptr),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C, kptr: u32, ksize: u32, vptr: u32, vsize: u32| -> R {
            count(&c, "proxy_set_property");
            let (Some(k), Some(v)) = (read(&c, kptr, ksize), read(&c, vptr, vsize)) else {
                return Ok(INVALID_MEMORY);
            };
            let ctx = c.data().context();
            match c.data_mut().streams.get_mut(&ctx) {
                Some(st) if st.created => {
                    st.module_props.insert(k, v);
                    Ok(OK)
                }
                // No stream info on a root context.
                _ => Ok(NOT_FOUND),
            }
        },
    )?;

    // ---- shared data ----
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C, kptr: u32, ksize: u32, vptr_ptr: u32, vsize_ptr: u32, cas_ptr: u32| -> R {
            count(&c, "proxy_get_shared_data");
            let Some(key) = read(&c, kptr, ksize) else {
                return Ok(INVALID_MEMORY);
            };
            let entry = c.data().host.borrow().shared.get(&key).cloned();
            let Some((value, cas)) = entry else {
                return Ok(NOT_FOUND);
            };
            if !give(&mut c, &value, vptr_ptr, vsize_ptr)? || !write_u32(&mut c, cas_ptr, cas) {
                return Ok(INVALID_MEMORY);
            }
            Ok(OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |c: C, kptr: u32, ksize: u32, vptr: u32, vsize: u32, cas: u32| -> R {
            count(&c, "proxy_set_shared_data");
            let (Some(key), Some(value)) = (read(&c, kptr, ksize), read(&c, vptr, vsize)) else {
                return Ok(INVALID_MEMORY);
            };
            let mut host = c.data().host.borrow_mut();
            if let Some((_, current)) = host.shared.get(&key) {
                if cas != 0 && cas != *current {
                    return Ok(CAS_MISMATCH);
                }
            }
            let next = host.take_cas();
            host.shared.insert(key, (value, next));
            Ok(OK)
        },
    )?;

    // ---- shared queues ----
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C, nptr: u32, nsize: u32, token_ptr: u32| -> R {
            count(&c, "proxy_register_shared_queue");
            let Some(name) = read(&c, nptr, nsize) else {
                return Ok(INVALID_MEMORY);
            };
            let ctx = c.data().context();
            let vm = c.data().index;
            let token = {
                let mut host = c.data().host.borrow_mut();
                let key = (host.options.vm_id.as_bytes().to_vec(), name);
                let token = match host.queue_tokens.get(&key) {
                    Some(t) => *t,
                    None => {
                        let t = host.next_queue_token;
                        host.next_queue_token += 1;
                        host.queue_tokens.insert(key, t);
                        t
                    }
                };
                let items = host.queues.remove(&token).map(|q| q.items).unwrap_or_default();
                host.queues.insert(
                    token,
                    QueueState {
                        owner_vm: vm,
                        owner_context: ctx,
                        items,
                    },
                );
                token
            };
            Ok(if write_u32(&mut c, token_ptr, token) {
                OK
            } else {
                INVALID_MEMORY
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C, vptr: u32, vsize: u32, nptr: u32, nsize: u32, token_ptr: u32| -> R {
            count(&c, "proxy_resolve_shared_queue");
            let (Some(vm_id), Some(name)) = (read(&c, vptr, vsize), read(&c, nptr, nsize)) else {
                return Ok(INVALID_MEMORY);
            };
            let token = c.data().host.borrow().queue_tokens.get(&(vm_id, name)).copied();
            match token {
                Some(t) => Ok(if write_u32(&mut c, token_ptr, t) {
                    OK
                } else {
                    INVALID_MEMORY
                }),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C, token: u32, ptr_ptr: u32, size_ptr: u32| -> R {
            count(&c, "proxy_dequeue_shared_queue");
            let item = {
                let mut host = c.data().host.borrow_mut();
                match host.queues.get_mut(&token) {
                    None => return Ok(NOT_FOUND),
                    Some(q) => match q.items.pop_front() {
                        None => return Ok(EMPTY),
                        Some(item) => item,
                    },
                }
            };
            give_status(&mut c, &item, ptr_ptr, size_ptr)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |c: C, token: u32, ptr: u32, size: u32| -> R {
            count(&c, "proxy_enqueue_shared_queue");
            let Some(data) = read(&c, ptr, size) else {
                return Ok(INVALID_MEMORY);
            };
            let mut host = c.data().host.borrow_mut();
            let Some(q) = host.queues.get_mut(&token) else {
                return Ok(NOT_FOUND);
            };
            q.items.push_back(data);
            let (vm, context) = (q.owner_vm, q.owner_context);
            host.events
                .push_back(HostEvent::QueueReady { vm, context, token });
            Ok(OK)
        },
    )?;

    // ---- stream control ----
    l.func_wrap("env", "proxy_continue_stream", |mut c: C, t: u32| -> R {
        count(&c, "proxy_continue_stream");
        let ctx = c.data().context();
        let d = c.data_mut();
        let response = match t {
            0 => false,
            1 => true,
            _ => return Ok(BAD_ARGUMENT),
        };
        if let Some(st) = d.streams.get_mut(&ctx) {
            // Envoy's continueStream nulls the request header/body/trailer pointers, whatever the
            // stream type.
            st.req.headers_access = false;
            st.req.body_access = false;
            st.req.trailers_access = false;
            d.after_call.push(AfterCall::Continue { ctx, response });
        }
        Ok(OK)
    })?;
    l.func_wrap("env", "proxy_close_stream", |mut c: C, t: u32| -> R {
        count(&c, "proxy_close_stream");
        let ctx = c.data().context();
        let d = c.data_mut();
        match t {
            0 | 1 => {
                if d.streams.contains_key(&ctx) {
                    d.after_call.push(AfterCall::Reset { ctx });
                }
                Ok(OK)
            }
            2 | 3 => Ok(OK),
            _ => Ok(BAD_ARGUMENT),
        }
    })?;
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C,
         status: u32,
         dptr: u32,
         dsize: u32,
         bptr: u32,
         bsize: u32,
         hptr: u32,
         hsize: u32,
         _grpc_status: i32|
         -> R {
            count(&c, "proxy_send_local_response");
            let (Some(details), Some(body), Some(headers)) = (
                read(&c, dptr, dsize),
                read(&c, bptr, bsize),
                read(&c, hptr, hsize),
            ) else {
                return Ok(INVALID_MEMORY);
            };
            let ctx = c.data().context();
            let d = c.data_mut();
            if d.streams.contains_key(&ctx) {
                // Envoy replaces whitespace in details with '_'.
                let details: String = text(&details)
                    .chars()
                    .map(|ch| if ch.is_whitespace() { '_' } else { ch })
                    .collect();
                d.after_call.push(AfterCall::LocalReply {
                    ctx,
                    status,
                    details,
                    body,
                    headers: pairs_to_strings(decode_pairs(&headers)),
                });
            }
            d.stop_iteration = true;
            Ok(OK)
        },
    )?;

    // ---- HTTP callouts ----
    l.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C,
         uptr: u32,
         usize_: u32,
         hptr: u32,
         hsize: u32,
         bptr: u32,
         bsize: u32,
         tptr: u32,
         tsize: u32,
         timeout_ms: u32,
         token_ptr: u32|
         -> R {
            count(&c, "proxy_http_call");
            let (Some(cluster), Some(headers), Some(body), Some(trailers)) = (
                read(&c, uptr, usize_),
                read(&c, hptr, hsize),
                read(&c, bptr, bsize),
                read(&c, tptr, tsize),
            ) else {
                return Ok(INVALID_MEMORY);
            };
            if !write_u32(&mut c, token_ptr, 0) {
                return Ok(INVALID_MEMORY);
            }
            if timeout_ms > i32::MAX as u32 {
                return Ok(BAD_ARGUMENT);
            }
            let cluster = text(&cluster);
            let known = c
                .data()
                .host
                .borrow()
                .options
                .clusters
                .as_ref()
                .is_none_or(|set| set.contains(&cluster));
            if !known {
                return Ok(BAD_ARGUMENT);
            }
            let mut headers = Headers::from_pairs(&pairs_to_strings(decode_pairs(&headers)));
            if !(headers.contains(":path") && headers.contains(":method") && headers.contains(":authority")) {
                return Ok(BAD_ARGUMENT);
            }
            if !body.is_empty() {
                headers.set("content-length", &body.len().to_string());
            }
            let trailers = Headers::from_pairs(&pairs_to_strings(decode_pairs(&trailers)));
            let d = c.data_mut();
            let token = d.next_http_token;
            d.next_http_token = d.next_http_token.wrapping_add(1).max(1);
            let vm = d.index;
            {
                let mut host = d.host.borrow_mut();
                let seq = host.next_callout_seq;
                host.next_callout_seq += 1;
                let now = host.now_ns;
                let timeout =
                    (timeout_ms > 0).then(|| std::time::Duration::from_millis(u64::from(timeout_ms)));
                host.callouts.push(PendingCallout {
                    seq,
                    vm,
                    token,
                    cluster,
                    headers,
                    body,
                    trailers,
                    timeout,
                    dispatched_at_ns: now,
                    deadline_ns: timeout.map(|t| now + t.as_nanos() as u64),
                });
            }
            Ok(if write_u32(&mut c, token_ptr, token) {
                OK
            } else {
                INVALID_MEMORY
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: C, code_ptr: u32, mptr_ptr: u32, msize_ptr: u32| -> R {
            count(&c, "proxy_get_status");
            let (code, message) = c.data().status.clone();
            if !write_u32(&mut c, code_ptr, code) {
                return Ok(INVALID_MEMORY);
            }
            give_status(&mut c, message.as_bytes(), mptr_ptr, msize_ptr)
        },
    )?;

    // ---- contexts ----
    l.func_wrap("env", "proxy_set_effective_context", |mut c: C, id: u32| -> R {
        count(&c, "proxy_set_effective_context");
        let d = c.data_mut();
        if d.context_exists(id) {
            d.effective_context = Some(id);
            Ok(OK)
        } else {
            Ok(BAD_ARGUMENT)
        }
    })?;
    l.func_wrap("env", "proxy_done", |c: C| -> R {
        count(&c, "proxy_done");
        // Only meaningful while Envoy shuts a VM down (never, here): NotFound, like Envoy.
        Ok(NOT_FOUND)
    })?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: C, nptr: u32, nsize: u32, aptr: u32, asize: u32, rptr_ptr: u32, rsize_ptr: u32| -> R {
            count(&c, "proxy_call_foreign_function");
            let (Some(name), Some(args)) = (read(&c, nptr, nsize), read(&c, aptr, asize)) else {
                return Ok(INVALID_MEMORY);
            };
            let name = text(&name);
            if c.data().host.borrow().options.disabled_foreign.contains(&name) {
                return Ok(NOT_FOUND);
            }
            match name.as_str() {
                "verify_signature" => match foreign::verify_signature(&args) {
                    Ok(result) => {
                        if rptr_ptr == 0 {
                            return Ok(OK);
                        }
                        // Envoy allocates the result even when it is empty.
                        let len = result.len() as u32;
                        let Some(malloc) = c.data().malloc.clone() else {
                            return Ok(INVALID_MEMORY);
                        };
                        let p = malloc.call(&mut c, len)?;
                        if (len > 0 && (p == 0 || !write(&mut c, p, &result)))
                            || !write_u32(&mut c, rptr_ptr, p)
                            || (rsize_ptr != 0 && !write_u32(&mut c, rsize_ptr, len))
                        {
                            return Ok(INVALID_MEMORY);
                        }
                        Ok(OK)
                    }
                    Err(foreign::ForeignError::Status(s)) => Ok(s.code()),
                    Err(foreign::ForeignError::NotEmulated(why)) => {
                        c.data_mut().fault = Some(format!("verify_signature: {why}"));
                        Err(wasmtime::Error::msg(format!(
                            "harness limitation: verify_signature: {why}"
                        )))
                    }
                },
                n if ENVOY_FOREIGN_NOT_EMULATED.contains(&n) => {
                    c.data_mut().fault = Some(format!(
                        "foreign function `{n}` exists in Envoy but the harness does not emulate it"
                    ));
                    Err(wasmtime::Error::msg(format!(
                        "harness limitation: foreign function {n}"
                    )))
                }
                _ => Ok(NOT_FOUND),
            }
        },
    )?;

    // ---- metrics ----
    l.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C, t: u32, nptr: u32, nsize: u32, id_ptr: u32| -> R {
            count(&c, "proxy_define_metric");
            let Some(kind) = MetricKind::from_code(t) else {
                return Ok(BAD_ARGUMENT);
            };
            let Some(name) = read(&c, nptr, nsize) else {
                return Ok(INVALID_MEMORY);
            };
            let name = text(&name);
            let d = c.data_mut();
            let id = d.next_metric_id(kind);
            d.metric_ids.insert(id, (name.clone(), kind));
            d.host
                .borrow_mut()
                .metrics
                .entry((name, MetricKindKey::from(kind)))
                .or_default();
            Ok(if write_u32(&mut c, id_ptr, id) {
                OK
            } else {
                INVALID_MEMORY
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: C, id: u32, offset: i64| -> R {
            count(&c, "proxy_increment_metric");
            let d = c.data();
            let kind = MetricKind::from_metric_id(id);
            let found = d.metric_ids.get(&id).filter(|(_, k)| Some(*k) == kind).cloned();
            match kind {
                Some(MetricKind::Counter) => {
                    let Some((name, _)) = found else {
                        return Ok(NOT_FOUND);
                    };
                    if offset <= 0 {
                        return Ok(BAD_ARGUMENT);
                    }
                    let mut host = d.host.borrow_mut();
                    let m = host.metrics.entry((name, MetricKindKey::Counter)).or_default();
                    m.value = m.value.wrapping_add(offset as u64);
                    Ok(OK)
                }
                Some(MetricKind::Gauge) => {
                    let Some((name, _)) = found else {
                        return Ok(NOT_FOUND);
                    };
                    let mut host = d.host.borrow_mut();
                    let m = host.metrics.entry((name, MetricKindKey::Gauge)).or_default();
                    m.value = if offset > 0 {
                        m.value.wrapping_add(offset as u64)
                    } else {
                        m.value.wrapping_sub(offset.unsigned_abs())
                    };
                    Ok(OK)
                }
                _ => Ok(BAD_ARGUMENT),
            }
        },
    )?;
    l.func_wrap("env", "proxy_record_metric", |c: C, id: u32, value: u64| -> R {
        count(&c, "proxy_record_metric");
        let d = c.data();
        let kind = MetricKind::from_metric_id(id);
        let Some((name, k)) = d.metric_ids.get(&id).filter(|(_, k)| Some(*k) == kind).cloned() else {
            return Ok(NOT_FOUND);
        };
        let mut host = d.host.borrow_mut();
        let m = host.metrics.entry((name, MetricKindKey::from(k))).or_default();
        match k {
            MetricKind::Counter => m.value = m.value.wrapping_add(value),
            MetricKind::Gauge => m.value = value,
            MetricKind::Histogram => m.samples.push(value),
        }
        Ok(OK)
    })?;
    l.func_wrap("env", "proxy_get_metric", |mut c: C, id: u32, ptr: u32| -> R {
        count(&c, "proxy_get_metric");
        let kind = MetricKind::from_metric_id(id);
        let value = {
            let d = c.data();
            match kind {
                Some(MetricKind::Counter) | Some(MetricKind::Gauge) => {
                    let Some((name, k)) = d.metric_ids.get(&id).filter(|(_, k)| Some(*k) == kind).cloned()
                    else {
                        return Ok(NOT_FOUND);
                    };
                    d.host
                        .borrow()
                        .metrics
                        .get(&(name, MetricKindKey::from(k)))
                        .map_or(0, |m| m.value)
                }
                _ => return Ok(BAD_ARGUMENT),
            }
        };
        Ok(if write_u64(&mut c, ptr, value) {
            OK
        } else {
            INVALID_MEMORY
        })
    })?;
    // ---- gRPC: Envoy provides it; the Rust SDK always imports it; the filter does not use it ----
    l.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: C,
         _a: u32,
         _b: u32,
         _cc: u32,
         _d: u32,
         _e: u32,
         _f: u32,
         _g: u32,
         _h: u32,
         _i: u32,
         _j: u32,
         _timeout: u32,
         _token_ptr: u32|
         -> R {
            count(&c, "proxy_grpc_call");
            c.data_mut().fault = Some("gRPC callouts (proxy_grpc_call) are not emulated".into());
            Err(wasmtime::Error::msg("harness limitation: proxy_grpc_call"))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut c: C,
         _a: u32,
         _b: u32,
         _cc: u32,
         _d: u32,
         _e: u32,
         _f: u32,
         _g: u32,
         _h: u32,
         _token_ptr: u32|
         -> R {
            count(&c, "proxy_grpc_stream");
            c.data_mut().fault = Some("gRPC streams (proxy_grpc_stream) are not emulated".into());
            Err(wasmtime::Error::msg("harness limitation: proxy_grpc_stream"))
        },
    )?;
    // No gRPC call or stream can exist, so every token is unknown.
    l.func_wrap(
        "env",
        "proxy_grpc_send",
        |c: C, _token: u32, _ptr: u32, _len: u32, _end: u32| -> R {
            count(&c, "proxy_grpc_send");
            Ok(NOT_FOUND)
        },
    )?;
    l.func_wrap("env", "proxy_grpc_cancel", |c: C, _token: u32| -> R {
        count(&c, "proxy_grpc_cancel");
        Ok(NOT_FOUND)
    })?;
    l.func_wrap("env", "proxy_grpc_close", |c: C, _token: u32| -> R {
        count(&c, "proxy_grpc_close");
        Ok(NOT_FOUND)
    })?;
    l.func_wrap("env", "pthread_equal", |c: C, a: u32, b: u32| -> u32 {
        count(&c, "pthread_equal");
        u32::from(a == b)
    })?;
    Ok(())
}

fn define_wasi(l: &mut Linker<VmState>, m: &str) -> wasmtime::Result<()> {
    l.func_wrap(
        m,
        "fd_write",
        |mut c: C, fd: u32, iovs: u32, iovs_len: u32, nwritten_ptr: u32| -> R {
            count(&c, "fd_write");
            let (level, source) = match fd {
                1 => (LogLevel::Info, LogSource::Stdout),
                2 => (LogLevel::Error, LogSource::Stderr),
                _ => return Ok(WASI_EBADF),
            };
            let mut out = Vec::new();
            for i in 0..iovs_len {
                let Some(iov) = read(&c, iovs.wrapping_add(i * 8), 8) else {
                    return Ok(WASI_EFAULT);
                };
                let buf = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                if len > 0 {
                    let Some(bytes) = read(&c, buf, len) else {
                        return Ok(WASI_EFAULT);
                    };
                    out.extend_from_slice(&bytes);
                }
            }
            let written = out.len() as u32;
            if !out.is_empty() {
                let d = c.data();
                {
                    let mut host = d.host.borrow_mut();
                    if fd == 1 {
                        host.stdout.extend_from_slice(&out);
                    } else {
                        host.stderr.extend_from_slice(&out);
                    }
                }
                let mut line = text(&out);
                if line.ends_with('\n') {
                    line.pop();
                }
                d.log(level, source, line);
            }
            Ok(if write_u32(&mut c, nwritten_ptr, written) {
                WASI_SUCCESS
            } else {
                WASI_EFAULT
            })
        },
    )?;
    l.func_wrap(
        m,
        "fd_read",
        |c: C, _fd: u32, _iovs: u32, _len: u32, _nread: u32| -> R {
            count(&c, "fd_read");
            Ok(WASI_ENOSYS)
        },
    )?;
    l.func_wrap(
        m,
        "fd_seek",
        |c: C, _fd: u32, _offset: i64, _whence: u32, _new_offset: u32| -> R {
            count(&c, "fd_seek");
            c.data()
                .log(LogLevel::Error, LogSource::Host, "wasi_unstable fd_seek".into());
            Ok(WASI_SUCCESS)
        },
    )?;
    l.func_wrap(m, "fd_close", |c: C, _fd: u32| -> R {
        count(&c, "fd_close");
        c.data()
            .log(LogLevel::Error, LogSource::Host, "wasi_unstable fd_close".into());
        Ok(WASI_SUCCESS)
    })?;
    l.func_wrap(m, "fd_fdstat_get", |mut c: C, fd: u32, stat_ptr: u32| -> R {
        count(&c, "fd_fdstat_get");
        if fd != 1 && fd != 2 {
            return Ok(WASI_EBADF);
        }
        // filetype/flags 0, rights_base = FD_WRITE (64), rights_inheriting 0.
        let mut stat = [0u8; 24];
        stat[8..16].copy_from_slice(&64u64.to_le_bytes());
        Ok(if write(&mut c, stat_ptr, &stat) {
            WASI_SUCCESS
        } else {
            WASI_EFAULT
        })
    })?;
    l.func_wrap(m, "environ_get", |c: C, _environ: u32, _buf: u32| -> R {
        count(&c, "environ_get");
        Ok(WASI_SUCCESS)
    })?;
    l.func_wrap(
        m,
        "environ_sizes_get",
        |mut c: C, count_ptr: u32, size_ptr: u32| -> R {
            count(&c, "environ_sizes_get");
            Ok(
                if write_u32(&mut c, count_ptr, 0) && write_u32(&mut c, size_ptr, 0) {
                    WASI_SUCCESS
                } else {
                    WASI_EFAULT
                },
            )
        },
    )?;
    l.func_wrap(m, "args_get", |c: C, _argv: u32, _buf: u32| -> R {
        count(&c, "args_get");
        Ok(WASI_SUCCESS)
    })?;
    l.func_wrap(
        m,
        "args_sizes_get",
        |mut c: C, argc_ptr: u32, size_ptr: u32| -> R {
            count(&c, "args_sizes_get");
            Ok(
                if write_u32(&mut c, argc_ptr, 0) && write_u32(&mut c, size_ptr, 0) {
                    WASI_SUCCESS
                } else {
                    WASI_EFAULT
                },
            )
        },
    )?;
    l.func_wrap(
        m,
        "clock_time_get",
        |mut c: C, id: u32, _precision: u64, time_ptr: u32| -> R {
            count(&c, "clock_time_get");
            let t = {
                let host = c.data().host.borrow();
                match id {
                    0 => host.now_ns,
                    1 => host.monotonic_ns(),
                    _ => return Ok(WASI_ENOTSUP),
                }
            };
            Ok(if write_u64(&mut c, time_ptr, t) {
                WASI_SUCCESS
            } else {
                WASI_EFAULT
            })
        },
    )?;
    l.func_wrap(m, "random_get", |mut c: C, buf: u32, len: u32| -> R {
        count(&c, "random_get");
        let mut bytes = vec![0u8; len as usize];
        c.data().host.borrow_mut().fill_random(&mut bytes);
        Ok(if write(&mut c, buf, &bytes) {
            WASI_SUCCESS
        } else {
            WASI_EFAULT
        })
    })?;
    l.func_wrap(m, "proc_exit", |mut c: C, code: i32| -> wasmtime::Result<()> {
        count(&c, "proc_exit");
        c.data_mut().exit_code = Some(code);
        Err(wasmtime::Error::msg(format!("proc_exit({code})")))
    })?;
    l.func_wrap(
        m,
        "path_open",
        |c: C,
         _fd: u32,
         _dirflags: u32,
         _path: u32,
         _path_len: u32,
         _oflags: u32,
         _rights_base: u64,
         _rights_inheriting: u64,
         _fdflags: u32,
         _fd_ptr: u32|
         -> R {
            count(&c, "path_open");
            Ok(WASI_ENOENT)
        },
    )?;
    l.func_wrap(m, "fd_prestat_get", |c: C, _fd: u32, _buf: u32| -> R {
        count(&c, "fd_prestat_get");
        Ok(WASI_EBADF)
    })?;
    l.func_wrap(
        m,
        "fd_prestat_dir_name",
        |c: C, _fd: u32, _path: u32, _len: u32| -> R {
            count(&c, "fd_prestat_dir_name");
            Ok(WASI_ENOSYS)
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::Status;

    #[test]
    fn status_codes_are_envoys() {
        let table = [
            (Status::Ok, OK),
            (Status::NotFound, NOT_FOUND),
            (Status::BadArgument, BAD_ARGUMENT),
            (Status::InvalidMemoryAccess, INVALID_MEMORY),
            (Status::Empty, EMPTY),
            (Status::CasMismatch, CAS_MISMATCH),
        ];
        for (status, code) in table {
            assert_eq!(status.code(), code, "{status:?}");
        }
    }

    #[test]
    fn the_linker_defines_exactly_the_known_imports() {
        let host = crate::Host::from_wat("(module)");
        let engine = &host.inner.program.engine;
        let l = linker(engine).unwrap();
        let state = crate::vm::VmState::detached(host.inner.state.clone());
        let mut store = wasmtime::Store::new(engine, state);
        let mut defined = defined_names(&l, &mut store);
        defined.sort();
        let mut known: Vec<(String, String)> = known_imports()
            .into_iter()
            .map(|(m, n)| (m.to_string(), n.to_string()))
            .collect();
        known.sort();
        assert_eq!(defined, known);
    }
}

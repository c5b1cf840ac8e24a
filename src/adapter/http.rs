//! One HTTP stream: applies the core's decision to the request and rewrites error responses.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::Config;

pub struct Stream {
    config: Option<Rc<Config>>,
}

impl Stream {
    pub fn new(config: Option<Rc<Config>>) -> Self {
        Stream { config }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.config.is_none() {
            let _ = proxy_wasm::hostcalls::send_http_response(500, vec![], None);
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let _ = proxy_wasm::hostcalls::set_map_value(
            proxy_wasm::types::MapType::HttpResponseHeaders,
            "x-smart-fhir-edge",
            Some(crate::VERSION),
        );
        Action::Continue
    }
}

//! The platform's floor for a Rust request (bench/README.md): the runtime calls a synchronous wasm
//! export, which answers "ok". What `bench/rust-floor` (the `worker` crate's async entry) and the
//! worker add above it is theirs, not the platform's.
extern crate worker; // worker-build's module calls the `worker` crate's exports at load

use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;

#[wasm_bindgen]
pub fn fetch(_request: JsValue, _env: JsValue, _ctx: JsValue) -> Result<web_sys::Response, JsValue> {
    web_sys::Response::new_with_opt_str(Some("ok"))
}

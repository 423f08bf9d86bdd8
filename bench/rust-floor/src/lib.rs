//! The smallest workers-rs worker: the floor of a Rust request on this platform (bench/README.md).
use worker::{event, Context, Env, Request, Response, Result};

#[event(fetch)]
async fn fetch(_request: Request, _env: Env, _ctx: Context) -> Result<Response> {
    Response::ok("ok")
}

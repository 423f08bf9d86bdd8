pub mod http;
pub mod keys;
pub mod session;
pub mod upload;

pub mod http;
pub mod upload;

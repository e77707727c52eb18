//! All integration tests, in one binary (one link, shared helpers).

mod api;
mod app;
mod cli;
mod config;
mod engine;
mod persist;
mod process;
mod reload;
mod secrets;
mod simulator;
mod soak;
mod store;
mod support;
mod wechat;

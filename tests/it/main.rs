//! All integration tests, in one binary (one link, shared helpers).

mod api;
mod app;
mod cli;
mod config;
mod engine;
mod reload;
mod simulator;
mod soak;
mod support;
mod wechat;

//! All integration tests, in one binary (one link, shared helpers).

mod api;
mod app;
mod cli;
mod config;
mod engine;
mod faults;
mod metrics;
mod observability;
mod open_platform;
mod open_process;
mod open_protocol;
mod open_replicas;
mod persist;
mod process;
mod proxy;
mod reload;
mod replicas;
mod sdk;
mod secrets;
mod simulator;
mod soak;
mod store;
mod support;
mod tickets;
mod upstream;
mod wechat;

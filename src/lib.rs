//! wxtoken: a central WeChat `access_token` server.
//!
//! The crate is organised by responsibility; `ARCHITECTURE.md` has the code map.

pub mod account;
pub mod agent;
pub mod api;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod domain;
pub mod engine;
pub mod fleet;
pub mod metrics;
pub mod openplatform;
pub mod panics;
pub mod registry;
pub mod reload;
pub mod replica;
pub mod simulator;
pub mod snapshot;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod wechat;

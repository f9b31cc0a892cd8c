//! summerd: live multimodal emotion recognition as a daemon.
//!
//! This crate is the daemon's library; the `summerd` binary (`src/main.rs`) is a thin CLI over
//! it. See `docs/architecture.md` for how the pieces fit.

#![warn(missing_docs)]

pub mod acoustic;
pub mod assets;
pub mod bert;
pub mod bus;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod decode;
pub mod events;
pub mod feed;
pub mod health;
pub mod infer;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod report;
pub mod resample;
pub mod rng;
pub mod settings;
pub mod signals;
pub mod stream_id;
pub mod streams;
pub mod tail;
pub mod text;
pub mod train;
pub mod transcripts;
pub mod version;
pub mod vision;
pub mod web;
pub mod wire;

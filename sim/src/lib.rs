//! The deterministic simulation of the Hanzo Base operator (ARCHITECTURE.md, `sim/`): replicas
//! running the core Quasar election and replication machines in front of an in-memory Base store, the operator running the real
//! reconciler against a model of Kubernetes, the gateway running the real leader tracker, and
//! clients, all in madsim under faults drawn from one seed, with the checkers after every step.
//!
//! Everything but the pure helpers builds only with `--cfg madsim` (`cargo sim …`, `cargo sim-test`).

pub mod clock;
pub mod poll;
pub mod rng;
pub mod stats;

#[cfg(madsim)]
pub mod agent;
#[cfg(madsim)]
pub mod cli;
#[cfg(madsim)]
pub mod config;
#[cfg(madsim)]
pub mod gateway;
#[cfg(madsim)]
pub mod k8s;
#[cfg(madsim)]
pub mod operator;
#[cfg(madsim)]
pub mod run;
#[cfg(madsim)]
pub mod store;
#[cfg(madsim)]
pub mod world;

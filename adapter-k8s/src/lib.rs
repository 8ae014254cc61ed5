//! The production shell of the Hanzo Base operator: everything that does I/O lives here, and every
//! decision is delegated to `base-core`.
pub mod agent;
pub mod cli;
pub mod controller;
pub mod gateway;
pub mod hop;
pub mod net;
pub mod plugin;
pub mod refusals;
pub mod store;

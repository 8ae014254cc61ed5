//! Pure, deterministic state machines of the Hanzo Base operator. No I/O, no clocks, no async:
//! time and randomness are inputs, effects are returned as data.

pub mod control;
pub mod ids;
pub mod quasar;
pub mod replication;
pub mod tracker;
pub mod wire;
pub mod writer_poll;

pub use ids::{Millis, NodeId, Term};
pub mod crd;
pub mod crdgen;
pub mod manifest;
pub mod reconcile;
pub mod validate;

//! Pure, deterministic state machines of the Hanzo Base operator. No I/O, no clocks, no async:
//! time and randomness are inputs, effects are returned as data.

// Planted bugs: the simulation's build and the core's own unit tests only (see the module).
#[cfg(any(madsim, test))]
pub mod buggify;

/// `buggify!(EarlyDone)`: whether that planted bug (`buggify::Bug`) is on. Always `false` outside
/// the simulation's build (`--cfg madsim`) and the core's unit tests, where the `buggify` module
/// does not exist. (Two definitions rather than `cfg` inside one expansion: `cfg(test)` must be
/// this crate's, not the caller's.)
#[cfg(any(madsim, test))]
#[macro_export]
macro_rules! buggify {
    ($bug:ident) => {
        $crate::buggify::planted($crate::buggify::Bug::$bug)
    };
}
#[cfg(not(any(madsim, test)))]
#[macro_export]
macro_rules! buggify {
    ($bug:ident) => {
        false
    };
}
pub mod agent;
pub mod control;
#[cfg(feature = "harness")]
pub mod harness;
pub mod ids;
pub mod members;
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

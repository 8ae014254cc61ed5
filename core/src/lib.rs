//! Pure, deterministic state machines of the Hanzo Base operator. No I/O, no clocks, no async:
//! time and randomness are inputs, effects are returned as data.

#[cfg(madsim)]
pub mod buggify;

/// `buggify!(EarlyDone)`: whether that planted bug (`buggify::Bug`) is on. Always `false` outside
/// the simulation's build (`--cfg madsim`), where the `buggify` module does not exist.
#[macro_export]
macro_rules! buggify {
    ($bug:ident) => {{
        #[cfg(madsim)]
        let on = $crate::buggify::planted($crate::buggify::Bug::$bug);
        #[cfg(not(madsim))]
        let on = false;
        on
    }};
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

//! One harness for driving a cluster of Quasar [`Node`](crate::quasar::Node)s, in the manner of
//! raft-rs's `harness/`: the core tests, the scenario scripts, the `election` fuzz target (and
//! whatever else drives nodes) share how effects are performed and what is checked.
//!
//! - [`Nodes`]: the nodes with their clocks ([`Clock`]), disks, fences and the operator's desired
//!   voters; every step goes through [`Nodes::step`], which feeds the [`Checker`] and performs
//!   the `Persist`s, and returns the effects so the driver routes the sends.
//! - [`Checker`]: the safety properties, among them the accept-window check
//!   ([`AcceptWindows`]: at no real instant two nodes accepting writes, computed exactly from each
//!   node's own clock and lease).
//! - [`Cluster`]: a driver with a network (delays, loss, duplicates, partitions) and 1 ms steps,
//!   all its random choices from one [`Rng`].
//! - [`scale_changes_under_faults`]: one seed's schedule of scale changes under faults (the
//!   membership property test's, and what the planted election bugs must not get past).
//!
//! Behind the cargo feature `harness` (off by default): test support, never compiled into the
//! operator.

mod checker;
mod clock;
mod cluster;
mod nodes;
#[cfg(test)]
mod planted;
mod rng;
mod scale;

pub use checker::{AcceptWindows, Checker, Overlap};
pub use clock::{Clock, PPM};
pub use cluster::{Cluster, INFLIGHT_MAX, NetFaults, TICK_MS, WRITE_EVERY_MS};
pub use nodes::{Nodes, Slot};
pub use rng::Rng;
pub use scale::{FAULT_PHASE_MS, SETTLE_BOUND_MS, UNIVERSE, scale_changes_under_faults};

//! Timestamps of one write's hops through the processes (gateway, agents, stores), for measuring
//! where a write's latency goes (BENCHMARKS.md, "Quorum-committed writes"): with
//! `RUST_LOG=base_hop=trace` every hop logs `us` (wall-clock microseconds, comparable across
//! the processes of one machine) and the log index it concerns (0 when not known yet).
//! `scripts/hops.py` lines them up. Off, a hop costs one cached level check.

/// Logs the hop `what` of the write (or shipment) at log `index`.
#[macro_export]
macro_rules! hop {
    ($what:literal, $index:expr) => {
        if tracing::enabled!(target: "base_hop", tracing::Level::TRACE) {
            let us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            let index: u64 = $index;
            tracing::trace!(target: "base_hop", us, index, hop = $what);
        }
    };
}

//! `base-sim`: the simulation's command line. It exists only in the madsim build.

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    base_sim::cli::main()
}

#[cfg(not(madsim))]
fn main() {
    println!(
        "base-sim runs only under madsim. Use the cargo aliases (.cargo/config.toml):\n  \
         cargo sim run --seed 7            one seed, with its timeline\n  \
         cargo sim campaign --seeds 1000   many seeds in parallel; key=value figures at the end\n  \
         cargo sim-test                    the CI seeds, the determinism check, the planted bug"
    );
}

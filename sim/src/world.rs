//! The shared state of one run: every simulated host's state lives here, behind one mutex (madsim
//! runs one task at a time, so the lock is never contended). The checkers run inside the mutators,
//! right after each step, and record the first violation; the supervisor then ends the run.

use crate::clock::Clock;
use crate::config::{BASE_NAME, SimConfig};
use crate::k8s::K8s;
use crate::operator::OperatorPoller;
use crate::rng::{Fnv, Rng};
use crate::stats::{Failover, FailoverKind};
use base_core::quasar::{Message, Node};
use base_core::reconcile::WriterView;
use base_core::replication::{Coordinator, LogPosition, Outcome, Shipment};
use base_core::tracker::{Tracker, TrackerConfig};
use base_core::{Millis, NodeId, Term};
use madsim::runtime::Handle;
use madsim::time::Instant;
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

pub type Shared = Arc<Mutex<World>>;

/// The world's lock. A panic on another task (an `assert!` in the core) poisons nothing we need.
pub fn lock(world: &Shared) -> MutexGuard<'_, World> {
    let mut w = world.lock().unwrap_or_else(|e| e.into_inner());
    // Simulated time stands still while a task runs (no await under the lock), so one clock read
    // serves the whole critical section: reading madsim's clock was a twentieth of a run.
    if w.frozen_ns.is_none() {
        w.locked_at_ns = Instant::now().duration_since(w.start).as_nanos() as u64;
    }
    w
}

/// Events kept for a failure report (the ring buffer's size).
pub const TRACE_RING: usize = 300;
/// Events still recorded after a violation, so the report shows what came right after it.
pub const TRACE_AFTER_VIOLATION: u64 = 25;

// ---------------------------------------------------------------------------------------------
// Hosts and addresses
// ---------------------------------------------------------------------------------------------

/// A simulated host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    Replica(i32),
    Gateway,
    Operator,
    Clients,
}

pub const AGENT_PORT: u16 = 8090;
pub const GATEWAY_PORT: u16 = 8080;

impl Host {
    pub fn ip(self) -> IpAddr {
        IpAddr::V4(match self {
            Host::Replica(i) => Ipv4Addr::new(10, 1, 0, i as u8 + 1),
            Host::Gateway => Ipv4Addr::new(10, 2, 0, 1),
            Host::Operator => Ipv4Addr::new(10, 3, 0, 1),
            Host::Clients => Ipv4Addr::new(10, 4, 0, 1),
        })
    }

    pub fn from_ip(ip: IpAddr) -> Option<Host> {
        let IpAddr::V4(v4) = ip else { return None };
        match v4.octets() {
            [10, 1, 0, n] if n >= 1 => Some(Host::Replica(i32::from(n) - 1)),
            [10, 2, 0, 1] => Some(Host::Gateway),
            [10, 3, 0, 1] => Some(Host::Operator),
            [10, 4, 0, 1] => Some(Host::Clients),
            _ => None,
        }
    }
}

pub fn agent_addr(ordinal: i32) -> SocketAddr {
    SocketAddr::new(Host::Replica(ordinal).ip(), AGENT_PORT)
}

pub fn gateway_addr() -> SocketAddr {
    SocketAddr::new(Host::Gateway.ip(), GATEWAY_PORT)
}

pub fn pod_name(ordinal: i32) -> String {
    base_core::reconcile::objects::pod_name(BASE_NAME, ordinal)
}

pub fn pod_id(ordinal: i32) -> NodeId {
    NodeId::new(pod_name(ordinal))
}

pub fn ordinal_of(id: &str) -> Option<i32> {
    id.strip_prefix(BASE_NAME)?.strip_prefix('-')?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// What travels on the simulated network
// ---------------------------------------------------------------------------------------------

/// A client write's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteId {
    pub client: u32,
    pub seq: u64,
}

/// One entry of a replica's store log: a client write, or the no-op a writer appends when it wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub term: Term,
    pub write: Option<WriteId>,
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.write {
            Some(w) => write!(f, "w{}.{}@t{}", w.client, w.seq, self.term),
            None => write!(f, "noop@t{}", self.term),
        }
    }
}

#[derive(Clone, Debug)]
pub enum WriteReply {
    /// Applied and replicated to a majority: the write is acknowledged.
    Ok { term: Term, index: u64 },
    /// Not the writer (or not in that term): `503 no_writer` / `307`.
    Refused { term: Term },
    /// Applied, but no majority acked it before the writer stepped down or timed out.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientOp {
    Write(WriteId),
    Read,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientResult {
    WriteOk,
    ReadOk,
    /// 503 from the gateway (`no_writer`, `no_replica`) or a refusal from the replica.
    Rejected,
    /// No answer in time, or an outcome the gateway cannot know.
    Failed,
}

#[derive(Clone, Debug)]
pub enum Packet {
    /// A Quasar election message between agents.
    Peer {
        from: NodeId,
        msg: Message,
    },
    /// A replica's agent pulls the writer's log after `after` (`GET /_replica/log` on the
    /// writer's control port, long-polled: `commit` is the writer's commit it last saw).
    Pull {
        from: i32,
        after: LogPosition,
        commit: Option<u64>,
    },
    /// The answer: a shipment and its entries, or `None` (`409 not_writer`).
    Ship {
        from: i32,
        shipment: Option<(Shipment, Vec<Entry>)>,
    },
    /// `GET /_replica/snapshot`.
    SnapshotRequest {
        from: i32,
    },
    /// The answer: the writer's term, and its committed state at a position (or `None`).
    Snapshot {
        from: i32,
        term: Term,
        snapshot: Option<(LogPosition, Vec<Entry>)>,
    },
    /// `GET /_ha/leader`.
    LeaderQuery {
        seq: u64,
    },
    /// Its JSON body (the exact wire shape the Hanzo gateway reads).
    LeaderAnswer {
        seq: u64,
        body: Vec<u8>,
    },
    /// A write forwarded by the gateway, with the term it believes current (`X-Base-Term`).
    Write {
        req: u64,
        term: Term,
        write: WriteId,
    },
    WriteReply {
        req: u64,
        reply: WriteReply,
    },
    /// A read forwarded by the gateway; `must_have` is the checker's: the client's acknowledged
    /// write that read-your-writes says this read must see.
    /// `writer_required`: the gateway's `X-Base-Writer: required` (its pinned reads and those
    /// marked so), which the agent serves only as the writer.
    Read {
        req: u64,
        writer_required: bool,
        must_have: Option<(u64, Entry)>,
    },
    ReadReply {
        req: u64,
        log_len: u64,
    },
    /// The agent refused a read that needs the writer: not the writer (`307` / `503 no_writer`,
    /// `not_writer` set) or its term start not yet committed (`503 term_start_not_committed`).
    ReadRefused {
        req: u64,
        not_writer: bool,
    },
    /// A client's request to the gateway, and its answer.
    Client {
        client: u32,
        req: u64,
        op: ClientOp,
    },
    ClientReply {
        req: u64,
        result: ClientResult,
    },
}

/// A packet to send once the world's lock is released.
#[derive(Debug)]
pub struct Out {
    pub to: SocketAddr,
    pub packet: Packet,
    /// 2 when the network duplicates it.
    pub copies: u8,
}

/// Sends packets from an endpoint (after the lock is released: sending awaits).
pub async fn send_all(ep: &madsim::net::Endpoint, outs: Vec<Out>) {
    for out in outs {
        for _ in 1..out.copies {
            let _ = ep
                .send_to_raw(out.to, 0, Box::new(out.packet.clone()))
                .await;
        }
        let _ = ep.send_to_raw(out.to, 0, Box::new(out.packet)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Per-host state
// ---------------------------------------------------------------------------------------------

/// The in-memory state of one replica's agent (lost when its process dies).
pub struct Agent {
    /// The production agent's decisions (`base_core::agent`): election, fence, transfers,
    /// shutdown, write admission, `/_ha/leader`.
    pub machine: base_core::agent::Agent,
    pub incarnation: u64,
    /// Set while this agent's election holds the writer role of that term (for the checkers).
    pub writer_term: Option<Term>,
    /// The production agent's replication decisions (`base_core::replication::Coordinator`):
    /// the store's role, commit counting, held writes, whom to pull from.
    pub coordinator: Coordinator,
    /// Positions the coordinator gave, for the election (the tokio driver's control queue).
    pub positions: Vec<(u64, u64)>,
    /// Held writes the coordinator released, by the coordinator's write id.
    pub released: BTreeMap<u64, Outcome>,
    pub next_hold: u64,
    /// Where this replica pulls from next: the writer, its term, after which entry, and the
    /// writer's commit in its last shipment (adapter-k8s `agent::replication::pull`'s cursor).
    pub cursor: Option<(NodeId, Term, LogPosition, Option<u64>)>,
    /// A pull or snapshot request is in flight since then (local time).
    pub pull_sent: Option<Millis>,
    /// The request in flight is a snapshot's (`GET /_replica/snapshot`).
    pub fetching: bool,
    /// No pull before this (after a failed one).
    pub pull_retry_at: Millis,
    /// Pulls held at this writer until there is something new (the store's long poll):
    /// `(peer, after, commit it knew, until)`.
    pub parked_pulls: Vec<(i32, LogPosition, Option<u64>, Millis)>,
    /// When the agent next re-reads its pod's annotations file (`--fence-file`), local time.
    pub next_fence_read: Millis,
    /// The kubelet's SIGTERM (pod terminating) has reached the agent.
    pub sigterm: bool,
    /// It was the writer at SIGTERM and started handing the role over.
    pub handed_over_on_sigterm: bool,
}

impl Agent {
    pub fn node(&self) -> &Node {
        self.machine.node()
    }
}

/// One ordinal's process slot.
pub struct Slot {
    pub clock: Clock,
    pub agent: Option<Agent>,
    pub incarnation: u64,
    pub paused: bool,
    /// When (real ns) the process last resumed from a pause.
    pub resumed_ns: u64,
    /// While this node may accept writes: from (real ns) until (real ns, projected from its lease).
    pub accept: Option<(u64, u64)>,
    /// The last lease end converted to real time (local → real is a search; a lease end is
    /// asked for again at every step until the next heartbeat round moves it).
    pub lease_real: Option<(Millis, u64)>,
    pub madsim_id: Option<madsim::task::NodeId>,
}

/// The gateway's leader tracker with its poller's bookkeeping: one poll task per replica, each
/// polling again after `Tracker::next_poll` (adapter-k8s `gateway::poll`).
pub struct Poller {
    pub tracker: Tracker,
    pub clock: Clock,
    /// The highest term any poll answer carried (the checker's own record, independent of the tracker).
    pub max_term_seen: Term,
    pub seq: u64,
    /// The writer this tracker last named (the checkers' record).
    pub named: Option<(i32, Term)>,
    /// Pollers asleep until their next poll, to be woken when the tracker lost its writer
    /// (`AfterOutcome::repoll`; adapter-k8s: the `repoll` watch channel).
    pub repoll_waiters: Vec<futures::channel::oneshot::Sender<()>>,
    /// Requests held for a writer, woken after every poll result (adapter-k8s: `polled`).
    pub poll_waiters: Vec<futures::channel::oneshot::Sender<()>>,
}

impl Poller {
    pub fn new(clock: Clock, poll_interval_ms: u64, ryw_ttl_ms: u64, ordinals: i32) -> Poller {
        let replicas = (0..ordinals).map(pod_id).collect();
        Poller {
            tracker: Tracker::new(
                replicas,
                TrackerConfig {
                    // A held write's retry must still be answered within the client's wait.
                    hold: Millis(
                        crate::gateway::CLIENT_TIMEOUT_MS - crate::gateway::FORWARD_TIMEOUT_MS,
                    ),
                    ..TrackerConfig::new(Millis(poll_interval_ms), Millis(ryw_ttl_ms))
                },
            )
            .expect("a valid replica list"),
            clock,
            max_term_seen: Term(0),
            seq: 0,
            named: None,
            repoll_waiters: Vec::new(),
            poll_waiters: Vec::new(),
        }
    }
}

/// A switchover the fault plan requested, for the checkers.
#[derive(Clone, Debug)]
pub struct SwitchoverRequest {
    pub target: String,
    /// The newest term any node had won when the request was made.
    pub term_at_request: Term,
}

/// What the checkers remember.
#[derive(Default)]
pub struct Checks {
    /// Invariant 1: the node that won each term.
    pub writer_of_term: BTreeMap<Term, i32>,
    /// Invariant 5: acknowledged writes, by log index.
    pub acked: BTreeMap<u64, Entry>,
    /// Invariant 4: each client's last acknowledged write and when the gateway acknowledged it
    /// (gateway clock).
    pub ryw: BTreeMap<u32, (u64, Entry, Millis)>,
    /// Invariant 9: the switchover the Base's annotation asks for now.
    pub switchover: Option<SwitchoverRequest>,
}

/// A failover under way.
#[derive(Debug, Clone, Copy)]
pub struct PendingFailover {
    /// When the fault struck (real ns).
    pub since_ns: u64,
    /// The term of the writer it took away.
    pub term: Term,
    pub kind: FailoverKind,
    /// No other fault in force when it struck, and none since.
    pub clean: bool,
}

/// Figures of one run.
#[derive(Default, Debug, Clone)]
pub struct Stats {
    pub acked_writes: u64,
    /// Replicas' stores that cut a conflicting suffix, installed a snapshot, and of those
    /// changes the ones that lowered the store's position (the epoch says it is news).
    pub log_cuts: u64,
    pub snapshots_installed: u64,
    pub positions_lowered: u64,
    pub failed_writes: u64,
    pub rejected: u64,
    pub reads: u64,
    /// Reads that needed the writer, refused by an agent that was not (or not yet) it.
    pub reads_refused: u64,
    pub terms: u64,
    pub failovers: Vec<Failover>,
    /// A writer-targeted fault struck the writer of a term, and no newer writer has acknowledged
    /// a write through the gateway yet.
    pub failover_pending: Option<PendingFailover>,
    /// Writes the gateway refused (503 `no_writer`), and those of them refused while some node
    /// could accept writes (the gateway's view lagging behind the election).
    pub writes_refused_by_gateway: u64,
    pub no_writer_while_one_accepts: u64,
    pub plans: u64,
    pub api_writes: u64,
    pub pod_starts: u64,
    pub transfers: u64,
    /// Agent processes that exited on SIGTERM before their kill (the machine's `Exit`), and of
    /// them those that had handed the writer role over first.
    pub sigterm_exits: u64,
    pub sigterm_exits_after_hand_over: u64,
    /// Reconcile passes that observed no writer while some node could accept writes.
    pub operator_no_writer_while_one_accepts: u64,
    /// Writes the gateway refused, and reconcile passes that saw no writer, because the poller
    /// forgot a writer it had named that still accepted writes, with no fault in the way.
    pub gateway_forgot_live_writer: u64,
    pub operator_forgot_live_writer: u64,
    pub switchovers_done: u64,
    pub switchovers_refused: u64,
    /// Of the refused: those whose target was fenced.
    pub switchovers_refused_fenced: u64,
    /// Times an agent applied `SetFenced(true)`, and of them while it was the writer.
    pub fences_applied: u64,
    pub fenced_writers: u64,
    /// Writes a fenced node refused.
    pub writes_refused_fenced: u64,
    /// Operator crashes, and of them those in the middle of a rolling update or a scale change.
    pub operator_crashes: u64,
    pub operator_crashes_mid_update: u64,
    pub operator_crashes_mid_scale: u64,
    /// Faults, switchovers and fences struck while a scale change rolled out (the election's
    /// configuration changing under them).
    pub faults_mid_scale: u64,
    /// How long the end of the run waited for a writer of the newest term (the newest writer
    /// had stepped down) before the final check of invariant 5.
    pub final_check_wait_ms: u64,
    /// The writer (term, ordinal) the final check of invariant 5 checked.
    pub final_checked: Option<(Term, i32)>,
    /// Ordinals scaled away whose PVC the end of the run found removed (`Delete`) or kept
    /// (`Retain`), as the policy says.
    pub pvcs_removed_on_scale_down: u64,
    pub pvcs_kept_on_scale_down: u64,
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
    pub at_ns: u64,
    pub trace: Vec<String>,
}

/// The event trace: a ring buffer for failure reports, a hash of everything for the determinism
/// check, and optionally everything (for `cargo sim run`).
pub struct Trace {
    ring: VecDeque<String>,
    pub hash: Fnv,
    pub count: u64,
    pub all: Option<Vec<String>>,
    stop_after: Option<u64>,
}

impl Trace {
    fn new(keep_all: bool) -> Trace {
        Trace {
            ring: VecDeque::with_capacity(TRACE_RING),
            hash: Fnv::default(),
            count: 0,
            all: keep_all.then(Vec::new),
            stop_after: None,
        }
    }

    fn push(&mut self, line: String) {
        if self.stop_after.is_some_and(|n| self.count >= n) {
            return;
        }
        self.count += 1;
        self.hash.write(line.as_bytes());
        self.hash.write(b"\n");
        if self.ring.len() == TRACE_RING {
            self.ring.pop_front();
        }
        if let Some(all) = self.all.as_mut() {
            all.push(line.clone());
        }
        self.ring.push_back(line);
    }

    pub fn ring(&self) -> Vec<String> {
        self.ring.iter().cloned().collect()
    }
}

/// Network faults in force (reference-counted, so overlapping faults compose).
#[derive(Default)]
pub struct NetState {
    pub clogged: BTreeMap<(Host, Host), u32>,
    pub dup_pct: u64,
    pub chaos: u32,
}

pub struct World {
    pub cfg: SimConfig,
    pub handle: Handle,
    start: Instant,
    pub rng: Rng,
    pub trace: Trace,
    pub violation: Option<Violation>,
    pub host_ids: BTreeMap<Host, madsim::task::NodeId>,
    pub net: NetState,
    pub replicas: Vec<Slot>,
    pub k8s: K8s,
    pub gateway: Poller,
    pub operator: OperatorPoller,
    pub checks: Checks,
    pub stats: Stats,
    /// Real time the faults were healed, once they were.
    pub healed_ns: Option<u64>,
    /// First write acknowledged through the gateway after the heal.
    pub live_ns: Option<u64>,
    /// The operator's last plan wrote nothing, or what it still wrote.
    pub last_plan: Option<Result<(), String>>,
    /// When the cluster first matched the spec after the heal and the last spec change.
    pub converged_ns: Option<u64>,
    /// Set when the run stops: time stands still for the report.
    pub frozen_ns: Option<u64>,
    /// Simulated time when the world was last locked ([`lock`]): `now_ns` while it is held.
    pub locked_at_ns: u64,
    pub last_event_ns: u64,
    pub messages: u64,
    /// Request ids of the gateway's forwards (replies are matched on them).
    pub next_req: u64,
    /// The last real time a network fault, a pause, or a pod not running with the spec's peer
    /// set was in force.
    pub disturbed_ns: u64,
    /// A pause of the writer waiting for its next write: (ordinal, for ms, strike anyway at ns).
    pub armed_pause: Option<(i32, u64, u64)>,
    /// Paused processes to resume: (at ns, ordinal, incarnation).
    pub resumes: Vec<(u64, i32, u64)>,
    /// The operator's process is down (crashed, not yet restarted).
    pub operator_down: bool,
}

impl World {
    pub fn new(cfg: SimConfig, handle: Handle) -> World {
        let replicas = cfg
            .replica_clocks
            .iter()
            .map(|&clock| Slot {
                clock,
                agent: None,
                incarnation: 0,
                paused: false,
                resumed_ns: 0,
                accept: None,
                lease_real: None,
                madsim_id: None,
            })
            .collect();
        let max = crate::config::MAX_ORDINALS;
        World {
            rng: Rng::new(cfg.seed.wrapping_mul(31).wrapping_add(17)),
            trace: Trace::new(cfg.keep_trace),
            violation: None,
            host_ids: BTreeMap::new(),
            net: NetState::default(),
            replicas,
            k8s: K8s::new(&cfg),
            gateway: Poller::new(cfg.gateway_clock, cfg.poll_interval_ms, cfg.ryw_ttl_ms, max),
            operator: OperatorPoller::new(cfg.operator_clock, cfg.poll_interval_ms),
            checks: Checks::default(),
            stats: Stats::default(),
            healed_ns: None,
            live_ns: None,
            last_plan: None,
            converged_ns: None,
            frozen_ns: None,
            locked_at_ns: 0,
            last_event_ns: 0,
            messages: 0,
            next_req: 0,
            armed_pause: None,
            disturbed_ns: 0,
            resumes: Vec::new(),
            operator_down: false,
            start: Instant::now(),
            handle,
            cfg,
        }
    }

    /// Real (simulated) time since the run started.
    pub fn now_ns(&self) -> u64 {
        self.frozen_ns.unwrap_or(self.locked_at_ns)
    }

    /// Whether the running agent of `ordinal` (if any) is fenced.
    pub fn agent_fenced(&self, ordinal: i32) -> bool {
        self.replicas[ordinal as usize]
            .agent
            .as_ref()
            .is_some_and(|a| a.node().is_fenced())
    }

    /// A replica's local clock now.
    pub fn local(&self, ordinal: i32) -> Millis {
        self.replicas[ordinal as usize]
            .clock
            .local_ms(self.now_ns())
    }

    pub fn gateway_now(&self) -> Millis {
        self.gateway.clock.local_ms(self.now_ns())
    }

    pub fn operator_now(&self) -> Millis {
        self.operator.clock.local_ms(self.now_ns())
    }

    /// Records an event in the trace.
    pub fn ev(&mut self, text: impl AsRef<str>) {
        let now = self.now_ns();
        self.last_event_ns = now;
        let line = format!(
            "{:>4}.{:03}s {}",
            now / 1_000_000_000,
            now / 1_000_000 % 1000,
            text.as_ref()
        );
        self.trace.push(line);
    }

    /// Records a violation (the first one wins) and freezes the trace shortly after it.
    pub fn fail(&mut self, invariant: &'static str, detail: impl Into<String>) {
        let detail = detail.into();
        self.ev(format!("VIOLATION {invariant}: {detail}"));
        if self.violation.is_some() {
            return;
        }
        self.trace.stop_after = Some(self.trace.count + TRACE_AFTER_VIOLATION);
        self.violation = Some(Violation {
            invariant,
            detail,
            at_ns: self.now_ns(),
            trace: Vec::new(),
        });
    }

    /// A packet to `to`, duplicated when the network is in a duplicating mood.
    pub fn out(&mut self, to: SocketAddr, packet: Packet) -> Out {
        let copies = if self.net.dup_pct > 0 && self.rng.percent(self.net.dup_pct) {
            2
        } else {
            1
        };
        Out { to, packet, copies }
    }

    /// Could `a` open a connection to `b` now (both directions open, `b`'s process running)? The
    /// gateway uses this as TCP would tell it: a refused connection never reached the replica.
    pub fn reachable(&self, a: Host, b: Host) -> bool {
        let open = |x, y| self.net.clogged.get(&(x, y)).copied().unwrap_or(0) == 0;
        let up = match b {
            Host::Replica(o) => self.replicas[o as usize].agent.is_some(),
            _ => true,
        };
        up && open(a, b) && open(b, a)
    }

    /// Cuts the link `a → b` (counted: it opens again when every fault that cut it has ended).
    pub fn clog(&mut self, a: Host, b: Host) {
        let n = self.net.clogged.entry((a, b)).or_insert(0);
        *n += 1;
        if *n == 1 {
            madsim::net::NetSim::current().clog_link(self.host_ids[&a], self.host_ids[&b]);
        }
    }

    pub fn unclog(&mut self, a: Host, b: Host) {
        let Some(n) = self.net.clogged.get_mut(&(a, b)) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.net.clogged.remove(&(a, b));
            madsim::net::NetSim::current().unclog_link(self.host_ids[&a], self.host_ids[&b]);
        }
    }

    /// Every host but the replicas, and every replica ordinal.
    pub fn all_hosts(&self) -> Vec<Host> {
        self.host_ids.keys().copied().collect()
    }

    /// The replica that accepts writes now, if any.
    pub fn current_writer(&self) -> Option<i32> {
        let now = self.now_ns();
        (0..self.replicas.len() as i32)
            .filter(|&o| {
                self.replicas[o as usize]
                    .accept
                    .is_some_and(|(_, until)| until > now)
            })
            .max_by_key(|&o| {
                self.replicas[o as usize]
                    .agent
                    .as_ref()
                    .map(|a| a.node().term())
            })
    }

    /// The writer the operator's reconcile observes now (`Writers::track`): the poller's, while
    /// its lease lasts.
    pub fn operator_writer(&self) -> Option<WriterView> {
        self.operator.poller.writer(self.operator_now())
    }

    /// The newest writer by the checkers' record (term, ordinal), whether or not it still accepts.
    pub fn latest_writer(&self) -> Option<(Term, i32)> {
        self.checks
            .writer_of_term
            .iter()
            .next_back()
            .map(|(t, o)| (*t, *o))
    }
}

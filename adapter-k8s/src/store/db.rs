//! The store's SQLite shell: one write connection owning the database file, its log
//! (`_base_log`) and its replication state (`_base_meta`) in the same file, so that a data change
//! and its log entry commit in one transaction (WAL, `synchronous=FULL`). The decisions come from
//! [`super::log`]; this module performs them.

use super::entry::{self, Entry, FrameError, Op};
use super::log::{self, Role, RoleChange};
use super::sql::{self, Mode, SharedAuth};
use super::tail::Tail;
use base_core::Term;
use base_core::replication::{
    LogPosition, LogShape, Replica, ReplicaEffect, ReplicaError, ReplicaInput, ReplicaState,
    Shipment, snapshot_installed,
};
use rusqlite::session::{ConflictAction, Session};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::{Map, Value as Json};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

pub const DB_FILE: &str = "store.db";
/// Where a snapshot being installed (or made) is written before it replaces (or leaves) anything.
const INCOMING: &str = "snapshot.incoming";
const OUTGOING: &str = "snapshot.outgoing";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS _base_log(
  idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS _base_meta(
  id INTEGER PRIMARY KEY CHECK (id = 1), term INTEGER NOT NULL, role TEXT NOT NULL,
  writer_id TEXT NOT NULL, writer_url TEXT NOT NULL, commit_index INTEGER NOT NULL,
  applied INTEGER NOT NULL, base_index INTEGER NOT NULL, base_term INTEGER NOT NULL,
  term_start INTEGER NOT NULL, needs_snapshot INTEGER NOT NULL, epoch INTEGER NOT NULL);
INSERT OR IGNORE INTO _base_meta VALUES (1, 0, 'replica', '', '', 0, 0, 0, 0, 0, 0, 0);
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("a log entry is damaged: {0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Invalid(String),
}

/// An answer other than success, as the HTTP layer shows it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("this store is {} in term {term}, not writer in the request's term", role.as_str())]
    NotWriter { term: u64, role: Role },
    #[error("term {given} is below the store's term {term}")]
    StaleTerm { given: u64, term: u64 },
    #[error("{0}")]
    Shipment(ReplicaError),
    #[error("the store needs a snapshot before it can go on")]
    NeedsSnapshot,
    #[error("the snapshot (index {index}) is not ahead of this store's commit {commit}")]
    SnapshotBehind { index: u64, commit: u64 },
    #[error("bad snapshot: {0}")]
    BadSnapshot(String),
    #[error("bad log frames: {0}")]
    BadFrames(FrameError),
    #[error("the uncommitted suffix holds DDL and cannot be undone in a snapshot; retry")]
    SnapshotUnavailable,
    #[error("internal: {0}")]
    Internal(#[from] StoreError),
}

impl From<std::io::Error> for Refusal {
    fn from(e: std::io::Error) -> Self {
        Refusal::Internal(e.into())
    }
}

impl From<rusqlite::Error> for Refusal {
    fn from(e: rusqlite::Error) -> Self {
        Refusal::Internal(e.into())
    }
}

/// Whether a transaction's commit waits for its fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    Fsync,
    Later,
}

pub fn pos(term: u64, index: u64) -> LogPosition {
    LogPosition::new(Term(term), index)
}

/// What `GET /_replica/log` sends (as headers and body).
#[derive(Debug, PartialEq, Eq)]
pub struct Served {
    pub term: u64,
    pub prev: LogPosition,
    pub log_start: LogPosition,
    pub commit: u64,
    pub frames: Vec<u8>,
}

/// The headers of `POST /_replica/append` (what `GET /_replica/log` sent).
#[derive(Debug, Clone, Copy)]
pub struct ShipmentHeaders {
    pub term: u64,
    pub prev: LogPosition,
    pub log_start: LogPosition,
    pub commit: u64,
}

/// What the replica's agent does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Pull { after: LogPosition },
    FetchSnapshot { at_least: LogPosition },
}

#[derive(Debug)]
pub struct Appended {
    pub state: State,
    pub next: Next,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub term: u64,
    pub role: Role,
    pub writer_id: String,
    pub writer_url: String,
    pub commit: u64,
    pub applied: u64,
    pub base_index: u64,
    pub base_term: u64,
    pub term_start: u64,
    pub needs_snapshot: bool,
    /// Grows with every change that can lower the position (truncation, snapshot install), so
    /// the election can take a lower position as news (`base_core::replication`).
    pub epoch: u64,
}

/// `GET /_replica/state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct State {
    pub version: u32,
    pub position: u64,
    pub last_index: u64,
    pub last_term: u64,
    pub commit: u64,
    pub applied: u64,
    pub term: u64,
    pub role: &'static str,
    pub writer_id: String,
    pub writer_url: String,
    pub log_start: u64,
    pub base_index: u64,
    pub base_term: u64,
    pub term_start: u64,
    pub needs_snapshot: bool,
    pub epoch: u64,
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Runs the store's own statements (transaction control, pragmas) in order, each prepared once
/// per connection: SQLite's parser was the top of the writer thread's profile when every
/// `BEGIN`, `SAVEPOINT`, `RELEASE` and `COMMIT` of every request was parsed again (BENCHMARKS.md).
fn run(conn: &Connection, statements: &[&str]) -> rusqlite::Result<()> {
    for sql in statements {
        conn.prepare_cached(sql)?.execute([])?;
    }
    Ok(())
}

/// The prepared statements kept per connection: the store's own (about twenty) and the
/// clients' recent ones.
const STATEMENT_CACHE: usize = 256;

fn load_meta(conn: &Connection) -> rusqlite::Result<Meta> {
    conn.query_row(
        "SELECT term, role, writer_id, writer_url, commit_index, applied, base_index, base_term,
                term_start, needs_snapshot, epoch FROM _base_meta WHERE id = 1",
        [],
        |r| {
            Ok(Meta {
                term: u(r.get(0)?),
                role: if r.get::<_, String>(1)? == "writer" {
                    Role::Writer
                } else {
                    Role::Replica
                },
                writer_id: r.get(2)?,
                writer_url: r.get(3)?,
                commit: u(r.get(4)?),
                applied: u(r.get(5)?),
                base_index: u(r.get(6)?),
                base_term: u(r.get(7)?),
                term_start: u(r.get(8)?),
                needs_snapshot: r.get::<_, i64>(9)? != 0,
                epoch: u(r.get(10)?),
            })
        },
    )
}

fn save_meta(conn: &Connection, m: &Meta) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE _base_meta SET term = ?1, role = ?2, writer_id = ?3, writer_url = ?4,
           commit_index = ?5, applied = ?6, base_index = ?7, base_term = ?8, term_start = ?9,
           needs_snapshot = ?10, epoch = ?11 WHERE id = 1",
    )?
    .execute(params![
        i(m.term),
        m.role.as_str(),
        m.writer_id,
        m.writer_url,
        i(m.commit),
        i(m.applied),
        i(m.base_index),
        i(m.base_term),
        i(m.term_start),
        i64::from(m.needs_snapshot),
        i(m.epoch),
    ])?;
    Ok(())
}

fn last_entry(conn: &Connection, m: &Meta) -> rusqlite::Result<(u64, u64)> {
    let last = conn
        .query_row(
            "SELECT idx, term FROM _base_log ORDER BY idx DESC LIMIT 1",
            [],
            |r| Ok((u(r.get(0)?), u(r.get(1)?))),
        )
        .optional()?;
    Ok(last.unwrap_or((m.base_index, m.base_term)))
}

fn term_at(conn: &Connection, m: &Meta, index: u64) -> rusqlite::Result<u64> {
    if index == m.base_index {
        return Ok(m.base_term);
    }
    conn.prepare_cached("SELECT term FROM _base_log WHERE idx = ?1")?
        .query_row([i(index)], |r| Ok(u(r.get(0)?)))
}

fn payloads(conn: &Connection, from: u64, to: u64) -> rusqlite::Result<Vec<(u64, Vec<u8>)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT idx, payload FROM _base_log WHERE idx >= ?1 AND idx <= ?2 ORDER BY idx",
    )?;
    let rows = stmt.query_map([i(from), i(to)], |r| Ok((u(r.get(0)?), r.get(1)?)))?;
    rows.collect()
}

fn new_session(conn: &Connection) -> rusqlite::Result<Session<'_>> {
    let mut s = Session::new(conn)?;
    s.table_filter(Some(|t: &str| !sql::is_internal(t)));
    s.attach(None::<&str>)?;
    Ok(s)
}

fn take_changeset(session: &mut Session<'_>, ops: &mut Vec<Op>) -> rusqlite::Result<()> {
    let mut cs = Vec::new();
    session.changeset_strm(&mut cs)?;
    if !cs.is_empty() {
        ops.push(Op::Changeset(cs));
    }
    Ok(())
}

fn abort_on_conflict(
    _: rusqlite::session::ConflictType,
    _: &rusqlite::session::ChangesetItem,
) -> ConflictAction {
    ConflictAction::SQLITE_CHANGESET_ABORT
}

/// Applies (or, `invert`, undoes) one entry's operations. A conflict means the database is not
/// the state the entry was recorded against: an error, never a silent merge.
fn apply_payload(conn: &Connection, payload: &[u8], invert: bool) -> Result<(), StoreError> {
    let ops = entry::decode_ops(payload)?;
    let apply = |cs: &[u8]| -> Result<(), StoreError> {
        conn.apply_strm(&mut &cs[..], None::<fn(&str) -> bool>, abort_on_conflict)
            .map_err(|e| StoreError::Invalid(format!("changeset does not apply: {e}")))
    };
    if invert {
        for op in ops.iter().rev() {
            match op {
                Op::Changeset(cs) => {
                    let mut inverse = Vec::new();
                    rusqlite::session::invert_strm(&mut &cs[..], &mut inverse)?;
                    apply(&inverse)?;
                }
                Op::Ddl(_) => return Err(StoreError::Invalid("DDL cannot be undone".into())),
            }
        }
    } else {
        for op in &ops {
            match op {
                Op::Changeset(cs) => apply(cs)?,
                Op::Ddl(sql) => {
                    let ran = conn.execute_batch(sql);
                    // Cached statements were prepared (and authorized) against the old schema.
                    conn.flush_prepared_statement_cache();
                    ran?
                }
            }
        }
    }
    Ok(())
}

fn holds_ddl(entries: &[(u64, Vec<u8>)]) -> Result<bool, StoreError> {
    for (_, p) in entries {
        if entry::decode_ops(p)?
            .iter()
            .any(|op| matches!(op, Op::Ddl(_)))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Undoes the entries above `m.commit` that the database shows, newest first. `Ok(false)`: one
/// of them cannot be undone (DDL); nothing was changed.
fn undo_suffix(conn: &Connection, m: &mut Meta) -> Result<bool, StoreError> {
    if m.applied <= m.commit {
        return Ok(true);
    }
    let suffix = payloads(conn, m.commit + 1, m.applied)?;
    if holds_ddl(&suffix)? {
        return Ok(false);
    }
    for (_, p) in suffix.iter().rev() {
        apply_payload(conn, p, true)?;
    }
    m.applied = m.commit;
    Ok(true)
}

fn apply_up_to(conn: &Connection, m: &mut Meta, to: u64) -> Result<(), StoreError> {
    if to <= m.applied {
        return Ok(());
    }
    for (idx, p) in payloads(conn, m.applied + 1, to)? {
        apply_payload(conn, &p, false)?;
        m.applied = idx;
    }
    assert_eq!(
        m.applied,
        to,
        "entries {}..={to} are not all held",
        m.applied + 1
    );
    Ok(())
}

pub struct ExecRequest {
    pub term: u64,
    pub stmts: Vec<sql::Statement>,
    pub transaction: bool,
    pub timings: bool,
}

#[derive(Debug)]
pub struct ExecAnswer {
    pub results: Vec<Json>,
    /// The entry that holds the request's changes, or the last entry it saw.
    pub index: u64,
    pub term: u64,
    pub seconds: f64,
}

/// The statement failed: its message for the client. Anything else is an internal error.
enum StmtError {
    Client(String),
    Internal(rusqlite::Error),
}

impl From<rusqlite::Error> for StmtError {
    fn from(e: rusqlite::Error) -> Self {
        StmtError::Internal(e)
    }
}

fn table_exists(conn: &Connection, table: &str) -> Result<bool, StmtError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1)",
        [table],
        |r| r.get(0),
    )?)
}

/// Whether the table's rows can be recorded by the session (a declared PRIMARY KEY that cannot
/// hold NULL), and whether it is empty (a `CREATE TABLE … AS SELECT` fills itself, and DDL
/// replicates as text, not as rows).
fn check_created_table(conn: &Connection, table: &str) -> Result<(), StmtError> {
    let create: String = conn
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or_default();
    let quoted = format!("\"{}\"", table.replace('"', "\"\""));
    let filled: bool = conn.query_row(
        &format!("SELECT EXISTS (SELECT 1 FROM {quoted})"),
        [],
        |r| r.get(0),
    )?;
    if filled {
        return Err(StmtError::Client(format!(
            "CREATE TABLE {table} … AS SELECT is refused: DDL replicates as its text, not as the \
             rows it copies; create the table, then INSERT … SELECT"
        )));
    }
    let without_rowid = create.to_ascii_uppercase().contains("WITHOUT ROWID");
    let mut stmt = conn.prepare("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1)")?;
    let cols: Vec<(String, String, bool, i64)> = stmt
        .query_map([table], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let pk: Vec<&(String, String, bool, i64)> = cols.iter().filter(|c| c.3 > 0).collect();
    if pk.is_empty() {
        return Err(StmtError::Client(format!(
            "table {table} has no PRIMARY KEY: replication records row changes by primary key \
             (SQLite session), so every table needs one"
        )));
    }
    let integer_key = pk.len() == 1 && pk[0].1.eq_ignore_ascii_case("INTEGER");
    if !without_rowid
        && !integer_key
        && let Some(c) = pk.iter().find(|c| !c.2)
    {
        return Err(StmtError::Client(format!(
            "PRIMARY KEY column {} of table {table} may hold NULL (SQLite allows it unless NOT \
             NULL), and replication cannot record a row with a NULL key: declare it NOT NULL, or \
             use INTEGER PRIMARY KEY",
            c.0
        )));
    }
    Ok(())
}

pub struct Store {
    conn: Connection,
    auth: SharedAuth,
    dir: PathBuf,
    pub meta: Meta,
    pub last_index: u64,
    pub last_term: u64,
    /// Entries kept below commit (so a replica a little behind needs no snapshot).
    keep: u64,
    /// The log's shape as last read, with the epoch it was read in: every pull and every
    /// shipment needs the shape, and reading it whole scans the log (up to `keep` entries and
    /// more), so only the entries past the cached end are read (see [`Store::shape`]).
    shape_cache: RefCell<Option<(u64, LogShape)>>,
    /// The newest entries, for pulls answered off this thread (`super::tail`).
    tail: Arc<Mutex<Tail>>,
    /// The entries of the batch being written, for the tail once it commits.
    fresh: Vec<Entry>,
}

fn open_conn(path: &Path, auth: &SharedAuth) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    sql::install_authorizer(&mut conn, auth)?;
    Ok(conn)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Store {
    pub fn open(dir: &Path, keep: u64) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)?;
        let auth = sql::new_auth();
        let conn = open_conn(&dir.join(DB_FILE), &auth)?;
        let meta = load_meta(&conn)?;
        let (last_index, last_term) = last_entry(&conn, &meta)?;
        let mut store = Store {
            conn,
            auth,
            dir: dir.to_path_buf(),
            meta,
            last_index,
            last_term,
            keep,
            shape_cache: RefCell::new(None),
            tail: Arc::new(Mutex::new(Tail::default())),
            fresh: Vec::new(),
        };
        store.recover()?;
        store.sync_tail()?;
        // A half-written snapshot from before a crash is garbage.
        for name in [INCOMING, OUTGOING] {
            let _ = std::fs::remove_file(dir.join(name));
        }
        Ok(store)
    }

    /// Re-establishes the invariants a crash cannot break but an older store might: a writer shows
    /// its whole log, a replica exactly its commit.
    fn recover(&mut self) -> Result<(), StoreError> {
        let m = &self.meta;
        assert!(m.commit <= self.last_index && m.applied <= self.last_index);
        assert!(m.base_index <= m.commit && m.base_index <= m.applied);
        if m.needs_snapshot {
            return Ok(());
        }
        match m.role {
            Role::Writer if m.applied < self.last_index => {
                let last = self.last_index;
                self.replication_txn(|conn, m| apply_up_to(conn, m, last))?;
            }
            Role::Replica if m.applied > m.commit => {
                let (t, id, url) = (m.term, m.writer_id.clone(), m.writer_url.clone());
                self.demote_txn(t, id, url)?;
            }
            Role::Replica if m.applied < m.commit => {
                let commit = m.commit;
                self.replication_txn(|conn, m| apply_up_to(conn, m, commit))?;
            }
            _ => {}
        }
        Ok(())
    }

    pub fn state(&self) -> State {
        let m = &self.meta;
        State {
            version: 1,
            position: log::position(self.last_index, self.last_term),
            last_index: self.last_index,
            last_term: self.last_term,
            commit: m.commit,
            applied: m.applied,
            term: m.term,
            role: m.role.as_str(),
            writer_id: m.writer_id.clone(),
            writer_url: m.writer_url.clone(),
            log_start: m.base_index + 1,
            base_index: m.base_index,
            base_term: m.base_term,
            term_start: m.term_start,
            needs_snapshot: m.needs_snapshot,
            epoch: m.epoch,
        }
    }

    /// Runs `f` in one immediate transaction with foreign-key actions off (replicated row images
    /// already hold their effects), on a copy of the meta that is saved and kept only if the
    /// transaction commits.
    fn replication_txn<T>(
        &mut self,
        f: impl FnOnce(&Connection, &mut Meta) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.replication_txn_with(Durability::Fsync, f)
    }

    /// [`Store::replication_txn`], with `Durability::Later` for a transaction whose loss in a
    /// power cut is harmless (it is atomic either way, and the next fsynced one makes it durable).
    fn replication_txn_with<T>(
        &mut self,
        durability: Durability,
        f: impl FnOnce(&Connection, &mut Meta) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let begin: &[&str] = match durability {
            Durability::Fsync => &[
                "PRAGMA synchronous = FULL",
                "PRAGMA foreign_keys = OFF",
                "BEGIN IMMEDIATE",
            ],
            // In WAL mode `NORMAL` skips the WAL's fsync at commit, nothing else.
            Durability::Later => &[
                "PRAGMA synchronous = NORMAL",
                "PRAGMA foreign_keys = OFF",
                "BEGIN IMMEDIATE",
            ],
        };
        let mut m = self.meta.clone();
        let out = run(&self.conn, begin)
            .map_err(StoreError::from)
            .and_then(|()| f(&self.conn, &mut m))
            .and_then(|t| {
                save_meta(&self.conn, &m)?;
                crate::hop!("store.txn_commit_start", 0);
                run(&self.conn, &["COMMIT"])?;
                Ok(t)
            });
        if out.is_err() && !self.conn.is_autocommit() {
            let _ = run(&self.conn, &["ROLLBACK"]);
            // A rolled-back schema change leaves statements prepared against the other schema.
            self.conn.flush_prepared_statement_cache();
        }
        // Whatever happened above, every later transaction is fsynced again.
        run(
            &self.conn,
            &["PRAGMA foreign_keys = ON", "PRAGMA synchronous = FULL"],
        )?;
        if out.is_ok() {
            self.meta = m;
            let (li, lt) = last_entry(&self.conn, &self.meta)?;
            self.last_index = li;
            self.last_term = lt;
        }
        out
    }

    /// The undo of a writer that is no longer one, with the new term and writer, in one
    /// transaction; if the suffix cannot be undone, the store waits for a snapshot.
    fn demote_txn(
        &mut self,
        term: u64,
        writer_id: String,
        writer_url: String,
    ) -> Result<(), StoreError> {
        self.replication_txn(|conn, m| {
            m.role = Role::Replica;
            m.term = term;
            m.writer_id = writer_id;
            m.writer_url = writer_url;
            if !undo_suffix(conn, m)? {
                tracing::warn!(
                    commit = m.commit,
                    applied = m.applied,
                    "the uncommitted suffix holds DDL: waiting for a snapshot"
                );
                m.needs_snapshot = true;
            }
            Ok(())
        })
    }

    /// `PUT /_replica/role`.
    pub fn set_role(
        &mut self,
        role: Role,
        term: u64,
        writer_id: String,
        writer_url: String,
        commit: u64,
    ) -> Result<State, Refusal> {
        let change = log::role_change(Term(self.meta.term), self.meta.role, Term(term), role);
        if change == RoleChange::Stale {
            return Err(Refusal::StaleTerm {
                given: term,
                term: self.meta.term,
            });
        }
        let unchanged = self.meta.term == term
            && self.meta.writer_id == writer_id
            && self.meta.writer_url == writer_url;
        match change {
            RoleChange::Stale => unreachable!("refused above"),
            RoleChange::StayWriter => {
                let c = log::writer_commit(self.meta.commit, commit, self.last_index);
                if !unchanged {
                    self.replication_txn(|_, m| {
                        m.commit = c;
                        m.writer_id = writer_id;
                        m.writer_url = writer_url;
                        Ok(())
                    })?;
                    self.compact_now()?;
                } else if c != self.meta.commit {
                    // The writer's commit is knowledge, not data: it reaches the disk with the
                    // next transaction, and a store that restarts with an older one is safe (it
                    // undoes and redoes a little more, a new writer counts commit again).
                    // Without this every commit push cost an fsync in the writer thread, in
                    // front of the next client writes.
                    self.meta.commit = c;
                    self.compact_now()?;
                }
            }
            RoleChange::StayReplica => {
                if !unchanged {
                    self.replication_txn(|_, m| {
                        m.term = term;
                        m.writer_id = writer_id;
                        m.writer_url = writer_url;
                        Ok(())
                    })?;
                }
            }
            RoleChange::Demote => self.demote_txn(term, writer_id, writer_url)?,
            RoleChange::Promote => {
                if self.meta.needs_snapshot {
                    return Err(Refusal::NeedsSnapshot);
                }
                let last = self.last_index;
                self.replication_txn(|conn, m| {
                    apply_up_to(conn, m, last)?;
                    m.term = term;
                    m.role = Role::Writer;
                    m.writer_id = writer_id;
                    m.writer_url = writer_url;
                    // The no-op of the new term: once it commits, so has everything before it.
                    let noop = last + 1;
                    conn.prepare_cached(
                        "INSERT INTO _base_log(idx, term, payload) VALUES (?1, ?2, x'')",
                    )?
                    .execute([i(noop), i(term)])?;
                    m.applied = noop;
                    m.term_start = noop;
                    m.commit = log::writer_commit(m.commit, commit, last);
                    Ok(())
                })?;
                tracing::info!(term, term_start = self.meta.term_start, "writer");
            }
        }
        Ok(self.state())
    }

    fn compact_now(&mut self) -> Result<(), StoreError> {
        let m = &self.meta;
        if log::compaction_floor(m.commit, m.applied, m.base_index, self.keep).is_none() {
            return Ok(());
        }
        let conn = &self.conn;
        let mut m = self.meta.clone();
        run(conn, &["BEGIN IMMEDIATE"])?;
        let out = compact_in(conn, &mut m, self.keep).and_then(|()| {
            save_meta(conn, &m)?;
            run(conn, &["COMMIT"])?;
            Ok(())
        });
        match out {
            Ok(()) => {
                self.meta = m;
                Ok(())
            }
            Err(e) => {
                let _ = run(conn, &["ROLLBACK"]);
                Err(e)
            }
        }
    }

    /// `POST /db/execute`, for a batch of requests that commit together (one fsync). Each request
    /// is one log entry; each answer is final once the batch's transaction is durable.
    ///
    /// `shippable` is called once the batch's entries can be shipped (before its fsync).
    pub fn execute(
        &mut self,
        reqs: Vec<ExecRequest>,
        shippable: impl FnOnce(),
    ) -> Vec<Result<ExecAnswer, Refusal>> {
        let mut answers: Vec<Option<Result<ExecAnswer, Refusal>>> = Vec::with_capacity(reqs.len());
        let mut admitted = Vec::new();
        for (k, r) in reqs.iter().enumerate() {
            if self.meta.role != Role::Writer
                || self.meta.term != r.term
                || self.meta.needs_snapshot
            {
                answers.push(Some(Err(Refusal::NotWriter {
                    term: self.meta.term,
                    role: self.meta.role,
                })));
            } else {
                answers.push(None);
                admitted.push(k);
            }
        }
        if admitted.is_empty() {
            return answers.into_iter().flatten().collect();
        }
        let before = (self.last_index, self.last_term, self.meta.applied);
        self.fresh.clear();
        let outcome = (|| -> Result<(), StoreError> {
            // Committed to the OS without an fsync (it survives this process's crash, not a
            // power cut), shipped, and only then fsynced: see `ship_and_sync`.
            run(
                &self.conn,
                &["PRAGMA synchronous = NORMAL", "BEGIN IMMEDIATE"],
            )?;
            for &k in &admitted {
                answers[k] = Some(self.execute_one(&reqs[k]));
            }
            save_meta(&self.conn, &self.meta)?;
            crate::hop!("store.commit_start", self.last_index);
            run(&self.conn, &["COMMIT"])?;
            Ok(())
        })();
        if outcome.is_ok() {
            self.ship_and_sync(shippable);
        }
        if let Err(e) = outcome {
            tracing::error!(error = %e, "a batch of writes failed to commit");
            if !self.conn.is_autocommit() {
                let _ = run(&self.conn, &["ROLLBACK"]);
            }
            self.conn.flush_prepared_statement_cache();
            (self.last_index, self.last_term, self.meta.applied) = before;
            for &k in &admitted {
                answers[k] = Some(Err(Refusal::Internal(StoreError::Invalid(format!(
                    "the write did not commit: {e}"
                )))));
            }
        }
        // Every other transaction states its own durability; this puts the default back.
        if let Err(e) = run(&self.conn, &["PRAGMA synchronous = FULL"]) {
            tracing::error!(error = %e, "cannot set synchronous = FULL again");
        }
        answers.into_iter().flatten().collect()
    }

    /// The pull handlers' view of the log (`super::tail`).
    pub fn tail(&self) -> Arc<Mutex<Tail>> {
        self.tail.clone()
    }

    fn lock_tail(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A committed batch (in the OS, not yet on the disk): its entries go to the tail and the
    /// pull handlers are woken (`shippable`), so the replicas append them while this store
    /// fsyncs; then the fsync, before any answer or published position names the entries (the
    /// writer's agent counts this store only once it holds them durably). Safe because a crash
    /// of this process keeps what the OS holds; only a power cut can lose a shipped entry, and
    /// the agent restarts with it and never writes in that term again (the contract's
    /// *Durability*). A failed fsync leaves the entries' fate unknown while replicas may hold
    /// them: the store stops (fail-stop, as PostgreSQL panics on a failed fsync) rather than
    /// answer as if they were lost and write other entries at their indices.
    fn ship_and_sync(&mut self, shippable: impl FnOnce()) {
        let fresh = std::mem::take(&mut self.fresh);
        {
            let mut tail = self.lock_tail();
            let follows = fresh
                .first()
                .is_some_and(|e| tail.last().index + 1 == e.index);
            if tail.term() == Some(self.meta.term) && follows {
                for e in &fresh {
                    if let Err(e) = tail.push(e) {
                        tracing::warn!(error = %e, "an entry cannot be framed for the tail");
                        let (t, ep, c) = (tail.term(), tail.epoch(), self.meta.commit);
                        let at = tail.last();
                        tail.reset(t, ep, at, pos(self.meta.base_term, self.meta.base_index), c);
                        break;
                    }
                }
            }
        }
        if !fresh.is_empty() {
            shippable();
        }
        crate::hop!("store.shippable", self.last_index);
        if let Err(e) = self.sync_wal() {
            tracing::error!(error = %e, "fsync of the write-ahead log failed: stopping (the batch's entries may have been shipped)");
            std::process::exit(70);
        }
    }

    /// fsyncs the database's write-ahead log (what `synchronous = FULL` does at commit).
    fn sync_wal(&self) -> std::io::Result<()> {
        let db = self.dir.join(DB_FILE);
        let mut wal = db.clone().into_os_string();
        wal.push("-wal");
        match std::fs::File::open(PathBuf::from(wal)) {
            Ok(f) => f.sync_data(),
            // No WAL (checkpointed and removed): the commit is in the database file.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::File::open(db)?.sync_data()
            }
            Err(e) => Err(e),
        }
    }

    /// Brings the tail in line with the log after a job: emptied on a change of role, term or
    /// epoch (or anything it cannot follow), extended by entries it was not given (a new
    /// writer's no-op), trimmed to the log's start, with the current commit.
    pub fn sync_tail(&self) -> Result<(), StoreError> {
        let m = &self.meta;
        let serving = (m.role == Role::Writer && !m.needs_snapshot).then_some(m.term);
        let last = pos(self.last_term, self.last_index);
        let start = pos(m.base_term, m.base_index);
        let mut tail = self.lock_tail();
        let follows = tail.term() == serving
            && serving.is_some()
            && tail.epoch() == m.epoch
            && tail.last().index <= last.index;
        if follows && tail.last().index < last.index {
            for (index, payload) in payloads(&self.conn, tail.last().index + 1, last.index)? {
                let term = term_at(&self.conn, m, index)?;
                tail.push(&Entry {
                    index,
                    term,
                    payload,
                })?;
            }
        }
        if !follows || tail.last() != last {
            tail.reset(serving, m.epoch, last, start, m.commit);
        }
        tail.set_log_start(start);
        tail.set_commit(m.commit);
        Ok(())
    }

    /// One request inside the batch's transaction, in a savepoint of its own.
    fn execute_one(&mut self, req: &ExecRequest) -> Result<ExecAnswer, Refusal> {
        let started = Instant::now();
        run(&self.conn, &["SAVEPOINT request"])?;
        let ran = run_statements(&self.conn, &self.auth, req);
        let (results, ops) = match ran {
            Ok(x) => x,
            Err(e) => {
                let _ = run(&self.conn, &["ROLLBACK TO request", "RELEASE request"]);
                self.conn.flush_prepared_statement_cache();
                return Err(e.into());
            }
        };
        let mut index = self.last_index;
        let mut term = self.last_term;
        if !ops.is_empty() {
            let payload = entry::encode_ops(&ops).map_err(StoreError::from)?;
            index = self.last_index + 1;
            term = self.meta.term;
            let inserted = self
                .conn
                .prepare_cached("INSERT INTO _base_log(idx, term, payload) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| s.execute(params![i(index), i(term), payload]));
            if inserted.is_ok() {
                self.fresh.push(Entry {
                    index,
                    term,
                    payload,
                });
            }
            if let Err(e) = inserted {
                let _ = run(&self.conn, &["ROLLBACK TO request", "RELEASE request"]);
                self.conn.flush_prepared_statement_cache();
                return Err(e.into());
            }
            self.last_index = index;
            self.last_term = term;
            self.meta.applied = index;
        }
        run(&self.conn, &["RELEASE request"])?;
        Ok(ExecAnswer {
            results,
            index,
            term,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// The log's shape (snapshot, term runs, end) for the core replication machines.
    ///
    /// From the cache when it still describes a prefix of the log, extended by the entries past
    /// its end. It does when the epoch is the same (every truncation and snapshot install raises
    /// it), its end `(index, term)` is still in the log, and the log's start is at or past the
    /// cache's: by Log Matching (an index of a term is only ever written by that term's writer,
    /// and a replica appends only after a matching `prev`) two logs that hold the same entry are
    /// the same up to it. Debug builds check every answer against a full read.
    fn shape(&self) -> Result<LogShape, StoreError> {
        let m = &self.meta;
        let base = pos(m.base_term, m.base_index);
        let last = pos(self.last_term, self.last_index);
        let mut cache = self.shape_cache.borrow_mut();
        let cached = match cache.take() {
            Some((epoch, mut shape))
                if epoch == m.epoch
                    && shape.snapshot().index <= base.index
                    && shape.last().index >= base.index
                    && shape.last().index <= last.index
                    && shape.term_at(base.index) == Some(base.term)
                    && self.holds(shape.last())? =>
            {
                if shape.snapshot() != base {
                    shape.compact(base.index).map_err(|e| {
                        StoreError::Invalid(format!("the log's compacted start: {e}"))
                    })?;
                }
                Some(shape)
            }
            _ => None,
        };
        let mut shape = cached.unwrap_or_else(|| LogShape::new(base));
        self.extend_shape(&mut shape)?;
        assert_eq!(
            shape.last(),
            last,
            "the log's shape does not end at its last entry"
        );
        debug_assert_eq!(
            shape,
            self.full_shape()?,
            "the cached log shape is not the log's"
        );
        *cache = Some((m.epoch, shape.clone()));
        Ok(shape)
    }

    /// Whether the log holds the entry `at` (or has it as its snapshot's last).
    fn holds(&self, at: LogPosition) -> Result<bool, StoreError> {
        if at.index == self.meta.base_index {
            return Ok(at.term.0 == self.meta.base_term);
        }
        let term: Option<i64> = self
            .conn
            .prepare_cached("SELECT term FROM _base_log WHERE idx = ?1")?
            .query_row([i(at.index)], |r| r.get(0))
            .optional()?;
        Ok(term.map(u) == Some(at.term.0))
    }

    /// Appends to `shape` the log's entries past its end, run by run.
    fn extend_shape(&self, shape: &mut LogShape) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT term, min(idx), max(idx) FROM _base_log WHERE idx > ?1 GROUP BY term ORDER BY term",
        )?;
        let runs = stmt
            .query_map([i(shape.last().index)], |r| {
                Ok((u(r.get(0)?), u(r.get(1)?), u(r.get(2)?)))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for (term, first, last) in runs {
            if first != shape.last().index + 1 {
                return Err(StoreError::Invalid(format!(
                    "the log has a gap before entry {first}"
                )));
            }
            shape
                .append(Term(term), last - first + 1)
                .map_err(|e| StoreError::Invalid(format!("the log's terms: {e}")))?;
        }
        Ok(())
    }

    /// The log's shape read whole (the cache's oracle).
    fn full_shape(&self) -> Result<LogShape, StoreError> {
        let mut shape = LogShape::new(pos(self.meta.base_term, self.meta.base_index));
        self.extend_shape(&mut shape)?;
        Ok(shape)
    }

    /// The log's shape in the contract's wire form (`PUT /_replica/role?shape=1`): the base, the
    /// first index of each term's run, the last index. The writer's agent starts its commit
    /// bookkeeping from it.
    pub fn shape_json(&self) -> Result<Json, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT term, min(idx) FROM _base_log GROUP BY term ORDER BY term")?;
        let runs = stmt
            .query_map([], |r| Ok([u(r.get(0)?), u(r.get(1)?)]))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(serde_json::json!({
            "base_index": self.meta.base_index,
            "base_term": self.meta.base_term,
            "runs": runs,
            "last_index": self.last_index,
        }))
    }

    /// `GET /_replica/log`: what to ship a replica whose log ends at `after` — from where both
    /// logs may agree (`after` itself if this log holds it, else the last entry that could, else
    /// this log's start: the replica then needs a snapshot), at most `max_bytes` of frames (but
    /// at least one entry if any).
    pub fn serve_log(&self, after: LogPosition, max_bytes: usize) -> Result<Served, Refusal> {
        let shape = self.shape()?;
        let start = shape.snapshot();
        let prev = shape.shipment_prev(after);
        let mut frames = Vec::new();
        let mut stmt = self.conn.prepare_cached(
            "SELECT idx, term, payload FROM _base_log WHERE idx > ?1 ORDER BY idx",
        )?;
        let mut rows = stmt.query([i(prev.index)])?;
        while let Some(r) = rows.next()? {
            let e = Entry {
                index: u(r.get(0)?),
                term: u(r.get(1)?),
                payload: r.get(2)?,
            };
            if !frames.is_empty() && frames.len() + entry::frame_len(&e) > max_bytes {
                break;
            }
            entry::encode_frame(&mut frames, &e).map_err(StoreError::from)?;
        }
        Ok(Served {
            term: self.meta.term,
            prev,
            log_start: start,
            commit: self.meta.commit,
            frames,
        })
    }

    /// `POST /_replica/append`: a shipment from the writer of `shipment.term`, decided by the
    /// core replica machine (`base_core::replication::Replica`) and performed here in one
    /// transaction.
    pub fn append(
        &mut self,
        shipment: &ShipmentHeaders,
        frames: &[u8],
    ) -> Result<Appended, Refusal> {
        if shipment.term < self.meta.term {
            return Err(Refusal::StaleTerm {
                given: shipment.term,
                term: self.meta.term,
            });
        }
        if shipment.term > self.meta.term || self.meta.role == Role::Writer {
            // Another writer's log: this store is a replica of it (a writer is demoted).
            let (id, url) = (self.meta.writer_id.clone(), self.meta.writer_url.clone());
            self.set_role(Role::Replica, shipment.term, id, url, 0)?;
        }
        if self.meta.needs_snapshot {
            return Ok(Appended {
                state: self.state(),
                next: Next::FetchSnapshot {
                    at_least: shipment.log_start,
                },
            });
        }
        let entries = entry::decode_frames(frames).map_err(Refusal::BadFrames)?;
        for (k, e) in entries.iter().enumerate() {
            if e.index != shipment.prev.index + 1 + k as u64 || e.term > shipment.term {
                return Err(Refusal::BadFrames(FrameError::Truncated(
                    "entries that do not follow X-Base-Prev-Index in order, or of a term above \
                     the writer's",
                )));
            }
        }
        let mut machine = Replica::new(ReplicaState {
            term: Term(self.meta.term),
            log: self.shape()?,
            commit: self.meta.commit,
            applied: self.meta.applied,
            epoch: self.meta.epoch,
        });
        let effects = machine
            .step(ReplicaInput::Shipment(Shipment {
                term: Term(shipment.term),
                prev: shipment.prev,
                entries: entries.iter().map(|e| Term(e.term)).collect(),
                commit: shipment.commit,
                log_start: shipment.log_start,
            }))
            .map_err(Refusal::Shipment)?;
        let decided = machine.state().clone();
        let mut next = Next::Pull {
            after: machine.last(),
        };
        let changes = effects.iter().any(|e| {
            matches!(
                e,
                ReplicaEffect::TruncateAfter { .. }
                    | ReplicaEffect::Append { .. }
                    | ReplicaEffect::Apply { .. }
                    | ReplicaEffect::FetchSnapshot { .. }
            )
        });
        if changes {
            let keep = self.keep;
            // Only entries and cuts must be on disk before the answer (the agent's next pull
            // tells the writer this store holds them); applying committed entries (and
            // compacting) can be redone from the log after a power cut.
            let durability = if effects.iter().any(|e| {
                matches!(
                    e,
                    ReplicaEffect::TruncateAfter { .. }
                        | ReplicaEffect::Append { .. }
                        | ReplicaEffect::FetchSnapshot { .. }
                )
            }) || decided.term.0 != self.meta.term
            {
                Durability::Fsync
            } else {
                Durability::Later
            };
            self.replication_txn_with(durability, |conn, m| {
                for effect in &effects {
                    match *effect {
                        ReplicaEffect::TruncateAfter { index, epoch } => {
                            assert!(index >= m.commit, "truncating committed entries");
                            if m.applied > index {
                                // Only a demoted writer shows entries above commit, and it
                                // undid them when it was demoted.
                                return Err(StoreError::Invalid(format!(
                                    "entries above {index} are applied (applied {})",
                                    m.applied
                                )));
                            }
                            conn.prepare_cached("DELETE FROM _base_log WHERE idx > ?1")?
                                .execute([i(index)])?;
                            m.epoch = epoch;
                        }
                        ReplicaEffect::Append { from, to } => {
                            let mut insert = conn.prepare_cached(
                                "INSERT INTO _base_log(idx, term, payload) VALUES (?1, ?2, ?3)",
                            )?;
                            for e in &entries {
                                if e.index >= from && e.index <= to {
                                    insert.execute(params![i(e.index), i(e.term), e.payload])?;
                                }
                            }
                        }
                        ReplicaEffect::Apply { up_to } => {
                            m.commit = m.commit.max(up_to);
                            apply_up_to(conn, m, up_to)?;
                        }
                        ReplicaEffect::FetchSnapshot { at_least, epoch } => {
                            m.epoch = epoch;
                            next = Next::FetchSnapshot { at_least };
                        }
                        ReplicaEffect::Position { .. } | ReplicaEffect::Pull { .. } => {}
                    }
                }
                m.term = m.term.max(decided.term.0);
                m.commit = m.commit.max(decided.commit);
                compact_in(conn, m, keep)?;
                Ok(())
            })?;
        } else if decided.term.0 != self.meta.term {
            self.replication_txn(|_, m| {
                m.term = decided.term.0;
                Ok(())
            })?;
        }
        if effects.iter().any(|e| {
            matches!(
                e,
                ReplicaEffect::TruncateAfter { .. } | ReplicaEffect::FetchSnapshot { .. }
            )
        }) {
            *self.shape_cache.get_mut() = None;
        }
        assert_eq!(
            pos(self.last_term, self.last_index),
            machine.last(),
            "the store's log is not the machine's"
        );
        Ok(Appended {
            state: self.state(),
            next,
        })
    }

    /// `GET /_replica/snapshot`: a consistent copy holding exactly the entries up to commit.
    /// Returns the file's path (in the data directory), its index and term.
    pub fn make_snapshot(&mut self) -> Result<(PathBuf, u64, u64), Refusal> {
        let out = self.dir.join(OUTGOING);
        let _ = std::fs::remove_file(&out);
        // The copy reads its commit from the file: give it the commit known in memory.
        save_meta(&self.conn, &self.meta)?;
        self.conn
            .execute("VACUUM INTO ?1", [out.to_string_lossy()])?;
        let auth = sql::new_auth();
        let copy = open_conn(&out, &auth)?;
        let mut m = load_meta(&copy)?;
        copy.execute_batch("PRAGMA foreign_keys = OFF; BEGIN IMMEDIATE")?;
        if !undo_suffix(&copy, &mut m)? {
            drop(copy);
            let _ = std::fs::remove_file(&out);
            return Err(Refusal::SnapshotUnavailable);
        }
        m.base_term = term_at(&copy, &m, m.commit)?;
        m.base_index = m.commit;
        m.applied = m.commit;
        m.role = Role::Replica;
        m.term_start = 0;
        copy.execute("DELETE FROM _base_log", [])?;
        save_meta(&copy, &m)?;
        copy.execute_batch("COMMIT; PRAGMA journal_mode = DELETE")?;
        drop(copy);
        Ok((out, m.base_index, m.base_term))
    }

    /// `PUT /_replica/snapshot`: `file` (already written and fsynced in the data directory by
    /// [`Store::incoming_path`]) replaces the database atomically.
    pub fn install_snapshot(
        &mut self,
        writer_term: u64,
        index: u64,
        term: u64,
        gate: &std::sync::RwLock<()>,
        close_readers: impl FnOnce(),
    ) -> Result<State, Refusal> {
        let incoming = self.dir.join(INCOMING);
        let result = self.install_inner(writer_term, index, term, gate, close_readers, &incoming);
        let _ = std::fs::remove_file(&incoming);
        result
    }

    pub fn incoming_path(&self) -> PathBuf {
        self.dir.join(INCOMING)
    }

    fn install_inner(
        &mut self,
        writer_term: u64,
        index: u64,
        term: u64,
        gate: &std::sync::RwLock<()>,
        close_readers: impl FnOnce(),
        incoming: &Path,
    ) -> Result<State, Refusal> {
        if writer_term < self.meta.term {
            return Err(Refusal::StaleTerm {
                given: writer_term,
                term: self.meta.term,
            });
        }
        if index <= self.meta.commit && !self.meta.needs_snapshot {
            return Err(Refusal::SnapshotBehind {
                index,
                commit: self.meta.commit,
            });
        }
        {
            let bad = |e: &dyn std::fmt::Display| Refusal::BadSnapshot(e.to_string());
            let copy = Connection::open(incoming).map_err(|e| bad(&e))?;
            let check: String = copy
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .map_err(|e| bad(&e))?;
            if check != "ok" {
                return Err(Refusal::BadSnapshot(format!("quick_check: {check}")));
            }
            let mut m = load_meta(&copy).map_err(|e| bad(&e))?;
            let (li, _) = last_entry(&copy, &m).map_err(|e| bad(&e))?;
            if m.base_index != index || m.base_term != term || li != index || m.applied != index {
                return Err(Refusal::BadSnapshot(format!(
                    "the file holds index {} term {} (last {li}), the headers say {index} {term}",
                    m.base_index, m.base_term
                )));
            }
            // The core's rule (the term, commit and epoch after it; the position may go down,
            // and the new epoch says it is news). A store waiting for a snapshot because its
            // suffix holds DDL takes one at any commit of the writer's.
            let known = ReplicaState {
                term: Term(self.meta.term),
                log: LogShape::new(pos(self.meta.base_term, self.meta.base_index)),
                commit: if self.meta.needs_snapshot {
                    self.meta.base_index
                } else {
                    self.meta.commit
                },
                applied: self.meta.applied,
                epoch: self.meta.epoch.max(m.epoch),
            };
            let decided = snapshot_installed(&known, Term(writer_term), pos(term, index))
                .map_err(Refusal::Shipment)?;
            m.term = decided.term.0;
            m.role = Role::Replica;
            m.writer_id = self.meta.writer_id.clone();
            m.writer_url = self.meta.writer_url.clone();
            m.commit = decided.commit;
            m.needs_snapshot = false;
            m.epoch = decided.epoch;
            save_meta(&copy, &m).map_err(|e| bad(&e))?;
            copy.execute_batch("PRAGMA journal_mode = DELETE")
                .map_err(|e| bad(&e))?;
            drop(copy);
            std::fs::File::open(incoming)?.sync_all()?;
        }
        // Nobody may hold the old file open across the rename: readers wait on the gate.
        let _closed = gate.write().unwrap_or_else(|p| p.into_inner());
        close_readers();
        let db = self.dir.join(DB_FILE);
        // An empty WAL (everything checkpointed) can go with the old file.
        let (busy, _, _): (i64, i64, i64) =
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
        if busy != 0 {
            return Err(Refusal::Internal(StoreError::Invalid(
                "the WAL could not be checkpointed; retry".into(),
            )));
        }
        let old = std::mem::replace(&mut self.conn, Connection::open_in_memory()?);
        if let Err((_, e)) = old.close() {
            return Err(e.into());
        }
        for suffix in ["-wal", "-shm"] {
            let mut p = db.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
        std::fs::rename(incoming, &db)?;
        fsync_dir(&self.dir)?;
        self.conn = open_conn(&db, &self.auth)?;
        self.meta = load_meta(&self.conn)?;
        let (li, lt) = last_entry(&self.conn, &self.meta)?;
        self.last_index = li;
        self.last_term = lt;
        *self.shape_cache.get_mut() = None;
        tracing::info!(index, term, "snapshot installed");
        Ok(self.state())
    }
}

fn compact_in(conn: &Connection, m: &mut Meta, keep: u64) -> Result<(), StoreError> {
    let Some(floor) = log::compaction_floor(m.commit, m.applied, m.base_index, keep) else {
        return Ok(());
    };
    m.base_term = term_at(conn, m, floor)?;
    conn.prepare_cached("DELETE FROM _base_log WHERE idx <= ?1")?
        .execute([i(floor)])?;
    m.base_index = floor;
    Ok(())
}

/// The statements of one request. Without `transaction` each statement runs in a savepoint of
/// its own (a failed one changes nothing, the others stand); with it the first failure ends the
/// request and the caller rolls everything back. Returns the results and the operations to log.
fn run_statements(
    conn: &Connection,
    auth: &SharedAuth,
    req: &ExecRequest,
) -> Result<(Vec<Json>, Vec<Op>), StoreError> {
    let mut results = Vec::with_capacity(req.stmts.len());
    let mut ops = Vec::new();
    let mut session = Some(new_session(conn)?);
    let mut failed = false;
    for st in &req.stmts {
        let started = Instant::now();
        if !req.transaction {
            run(conn, &["SAVEPOINT stmt"])?;
        }
        match run_one(conn, auth, st, &mut session, &mut ops) {
            Ok(mut res) => {
                if !req.transaction {
                    run(conn, &["RELEASE stmt"])?;
                }
                if req.timings {
                    res.insert("time".into(), started.elapsed().as_secs_f64().into());
                }
                results.push(Json::Object(res));
            }
            Err(StmtError::Client(msg)) => {
                results.push(sql::error_result(msg));
                if req.transaction {
                    failed = true;
                    break;
                }
                run(conn, &["ROLLBACK TO stmt", "RELEASE stmt"])?;
                // It may have undone a schema change (a failed DDL statement).
                conn.flush_prepared_statement_cache();
            }
            Err(StmtError::Internal(e)) => return Err(e.into()),
        }
        if session.is_none() {
            session = Some(new_session(conn)?);
        }
    }
    if failed {
        // All or nothing: the caller's savepoint rollback undoes every statement.
        run(conn, &["ROLLBACK TO request"])?;
        conn.flush_prepared_statement_cache();
        return Ok((results, Vec::new()));
    }
    if let Some(s) = session.as_mut() {
        take_changeset(s, &mut ops)?;
    }
    Ok((results, ops))
}

fn run_one<'c>(
    conn: &'c Connection,
    auth: &SharedAuth,
    st: &sql::Statement,
    session: &mut Option<Session<'c>>,
    ops: &mut Vec<Op>,
) -> Result<Map<String, Json>, StmtError> {
    sql::set_mode(auth, Mode::Execute);
    // A statement comes from the cache only if it was prepared here before under the same
    // schema (every schema change and every rollback flushes the cache) and allowed as it is:
    // the authorizer runs only when a statement is prepared, so a refused statement (its
    // prepare failed) and DDL (discarded below) are never cached, and a cached one carries no
    // verdict but "allowed, not DDL".
    let prepared = conn.prepare_cached(&st.sql);
    let (refused, ddl, created) = {
        let mut a = auth.lock().unwrap_or_else(|p| p.into_inner());
        a.mode = Mode::Internal;
        (a.refused.take(), a.ddl, std::mem::take(&mut a.created))
    };
    let cached = match (prepared, refused) {
        (Ok(s), Some(why)) => {
            s.discard();
            return Err(StmtError::Client(why));
        }
        (Err(_), Some(why)) => return Err(StmtError::Client(why)),
        (Err(e), None) => return Err(StmtError::Client(e.to_string())),
        (Ok(s), None) => s,
    };
    let mut stmt = if ddl {
        // Never back into the cache: its next use would skip the authorizer, and with it the
        // DDL flag that makes it replicate as text. Prepared again, uncached (allowed above).
        cached.discard();
        conn.flush_prepared_statement_cache();
        StmtHandle::Fresh(conn.prepare(&st.sql)?)
    } else {
        StmtHandle::Cached(cached)
    };
    sql::bind(&mut stmt, &st.params).map_err(StmtError::Client)?;
    let mut res = Map::new();
    if ddl {
        if st.has_params() {
            return Err(StmtError::Client(
                "DDL replicates as its text: it cannot take parameters".into(),
            ));
        }
        // What came before the schema change is recorded against the old schema.
        if let Some(mut s) = session.take() {
            take_changeset(&mut s, ops)?;
        }
        // `CREATE TABLE IF NOT EXISTS` of a table that exists creates nothing: only tables the
        // statement really makes are checked (an existing one may hold rows).
        let mut fresh = Vec::with_capacity(created.len());
        for t in created {
            if !table_exists(conn, &t)? {
                fresh.push(t);
            }
        }
        let ran = step_all(&mut stmt);
        drop(stmt);
        conn.flush_prepared_statement_cache();
        ran?;
        for t in &fresh {
            check_created_table(conn, t)?;
        }
        ops.push(Op::Ddl(st.sql.clone()));
        res.insert("rows_affected".into(), 0.into());
        return Ok(res);
    }
    let readonly = stmt.readonly();
    step_all(&mut stmt)?;
    drop(stmt);
    if !readonly {
        res.insert("last_insert_id".into(), conn.last_insert_rowid().into());
        res.insert("rows_affected".into(), conn.changes().into());
    }
    Ok(res)
}

/// A client statement: from the cache (allowed DML), or prepared for this one use (DDL).
enum StmtHandle<'c> {
    Cached(rusqlite::CachedStatement<'c>),
    Fresh(rusqlite::Statement<'c>),
}

impl<'c> std::ops::Deref for StmtHandle<'c> {
    type Target = rusqlite::Statement<'c>;
    fn deref(&self) -> &Self::Target {
        match self {
            StmtHandle::Cached(s) => s,
            StmtHandle::Fresh(s) => s,
        }
    }
}

impl std::ops::DerefMut for StmtHandle<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            StmtHandle::Cached(s) => s,
            StmtHandle::Fresh(s) => s,
        }
    }
}

fn step_all(stmt: &mut rusqlite::Statement<'_>) -> Result<(), StmtError> {
    let mut rows = stmt.raw_query();
    loop {
        match rows.next() {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(e) => return Err(StmtError::Client(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn dir() -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "base-store-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn exec(s: &mut Store, tx: bool, stmts: &[&str]) -> ExecAnswer {
        let term = s.meta.term;
        let a = s
            .execute(
                vec![ExecRequest {
                    term,
                    stmts: stmts.iter().map(|q| sql::Statement::plain(*q)).collect(),
                    transaction: tx,
                    timings: false,
                }],
                || {},
            )
            .pop()
            .unwrap()
            .unwrap();
        s.sync_tail().unwrap();
        a
    }

    /// A statement sent again may come from the prepared-statement cache, which skips the
    /// authorizer: DDL must still be logged as DDL, a refused statement refused again, and a
    /// cached statement must see a schema change. Fails if the cache keeps DDL or refused
    /// statements, or outlives a schema change.
    #[test]
    fn cached_statements_keep_the_authorizers_verdict() {
        let d = dir();
        let mut w = writer(&d, 1);
        let create = "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v INTEGER)";
        let insert = "INSERT INTO t(v) VALUES (1)";
        for round in 0..3 {
            let a = exec(
                &mut w,
                false,
                &[create, insert, "INSERT INTO _base_log VALUES (99, 9, x'')"],
            );
            assert!(a.results[0].get("error").is_none(), "{:?}", a.results);
            assert!(a.results[1].get("error").is_none(), "{:?}", a.results);
            assert!(
                a.results[2]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("_base_")),
                "round {round}: {:?}",
                a.results
            );
            let payload: Vec<u8> = w
                .conn
                .query_row(
                    "SELECT payload FROM _base_log WHERE idx = ?1",
                    [i(a.index)],
                    |r| r.get(0),
                )
                .unwrap();
            let ops = entry::decode_ops(&payload).unwrap();
            assert!(
                matches!(ops.first(), Some(Op::Ddl(sql)) if sql == create),
                "round {round}: the CREATE is logged as DDL: {ops:?}"
            );
        }
        exec(
            &mut w,
            false,
            &["ALTER TABLE t ADD COLUMN w INTEGER NOT NULL DEFAULT 7"],
        );
        exec(&mut w, false, &[insert]);
        assert_eq!(
            rows(&w, "SELECT count(*) || ':' || min(w) FROM t"),
            vec!["4:7"]
        );
    }

    /// Every pull the tail answers (from memory, off the writer thread) is answered exactly as
    /// the log would answer it, through writes, commits, compaction, a new term and a
    /// demotion; it answers the pulls of replicas that are caught up or a little behind, and
    /// nothing once the store is not the writer. Fails if the tail ships other entries, another
    /// prev, commit or log start than `serve_log`, or serves a store that is not a writer.
    #[test]
    fn pulls_from_the_tail_are_the_logs_answers() {
        let d = dir();
        let mut w = Store::open(&d, 4).unwrap();
        let check = |w: &Store| -> usize {
            let tail = w.tail();
            let tail = tail.lock().unwrap();
            let mut served = 0;
            for index in 0..=w.last_index + 1 {
                for term in 0..=w.meta.term + 1 {
                    for max in [1, 60, 1 << 20] {
                        let after = pos(term, index);
                        if let Some(fast) = tail.serve(after, max) {
                            assert_eq!(fast, w.serve_log(after, max).unwrap(), "after {after}");
                            served += 1;
                        }
                    }
                }
            }
            served
        };
        w.set_role(Role::Writer, 1, "w".into(), "u".into(), 0)
            .unwrap();
        w.sync_tail().unwrap();
        exec(
            &mut w,
            false,
            &["CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)"],
        );
        for k in 0..12 {
            exec(
                &mut w,
                false,
                &[&format!("INSERT INTO t VALUES ({k}, {k})")],
            );
            if k % 3 == 0 {
                let c = w.last_index;
                w.set_role(Role::Writer, 1, "w".into(), "u".into(), c)
                    .unwrap();
                w.sync_tail().unwrap();
            }
            assert!(check(&w) >= 3, "the caught-up replica's pull is served");
        }
        assert!(w.meta.base_index > 0, "compacted");
        // A new term (demoted, promoted again): its no-op and writes are served again.
        w.set_role(Role::Replica, 2, "x".into(), "v".into(), 0)
            .unwrap();
        w.sync_tail().unwrap();
        assert_eq!(check(&w), 0, "a replica ships nothing");
        w.set_role(Role::Writer, 3, "w".into(), "u".into(), 0)
            .unwrap();
        w.sync_tail().unwrap();
        exec(&mut w, false, &["INSERT INTO t VALUES (100, 0)"]);
        assert!(check(&w) >= 3);
        let tail = w.tail();
        assert_eq!(tail.lock().unwrap().last(), pos(3, w.last_index));
    }

    fn rows(s: &Store, q: &str) -> Vec<String> {
        let mut st = s.conn.prepare(q).unwrap();
        st.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    fn writer(d: &Path, term: u64) -> Store {
        let mut s = Store::open(d, 100).unwrap();
        s.set_role(Role::Writer, term, "w".into(), "http://w".into(), 0)
            .unwrap();
        s
    }

    /// Ships everything from `from` to `to` the way an agent would: pull where the replica's
    /// machine says, until an empty shipment changes nothing.
    fn ship(from: &mut Store, to: &mut Store) -> State {
        let mut after = pos(to.last_term, to.last_index);
        for _ in 0..20 {
            let served = from.serve_log(after, 1 << 20).unwrap();
            let headers = ShipmentHeaders {
                term: served.term,
                prev: served.prev,
                log_start: served.log_start,
                commit: served.commit,
            };
            let a = to.append(&headers, &served.frames).unwrap();
            match a.next {
                Next::Pull { after: next } if served.frames.is_empty() && next == after => {
                    return a.state;
                }
                Next::Pull { after: next } => after = next,
                Next::FetchSnapshot { .. } => panic!("a snapshot is needed"),
            }
        }
        panic!("no convergence")
    }

    /// Row images carry what the writer computed; a failed statement (its own savepoint) leaves
    /// nothing in the changeset; replicas apply only up to commit.
    #[test]
    fn replicas_get_the_writers_values_and_only_up_to_commit() {
        let (dw, dr) = (dir(), dir());
        let mut w = writer(&dw, 1);
        let mut r = Store::open(&dr, 100).unwrap();
        exec(
            &mut w,
            false,
            &["CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)"],
        );
        let a = exec(
            &mut w,
            false,
            &[
                "INSERT INTO t(v) VALUES (hex(randomblob(8)))",
                "INSERT INTO t(id, v) VALUES (1, 'duplicate key')",
                "INSERT INTO t(v) VALUES (datetime('now') || random())",
            ],
        );
        assert!(a.results[1].get("error").is_some(), "{:?}", a.results);
        assert_eq!(a.index, 3, "no-op 1, DDL 2, the inserts 3");
        // Not committed yet: shipped but not applied.
        let st = ship(&mut w, &mut r);
        assert_eq!((st.last_index, st.commit, st.applied), (3, 0, 0));
        w.set_role(Role::Writer, 1, "w".into(), "http://w".into(), 3)
            .unwrap();
        let st = ship(&mut w, &mut r);
        assert_eq!((st.commit, st.applied), (3, 3));
        let q = "SELECT id || ':' || v FROM t ORDER BY id";
        assert_eq!(rows(&w, q), rows(&r, q));
        assert_eq!(rows(&r, q).len(), 2);
    }

    /// A writer deposed with uncommitted entries undoes them, then takes the new writer's log
    /// (truncating its own suffix) and ends equal to it.
    #[test]
    fn a_demoted_writer_undoes_its_suffix_and_converges() {
        let (d1, d2) = (dir(), dir());
        let mut old = writer(&d1, 1);
        let mut new = Store::open(&d2, 100).unwrap();
        exec(
            &mut old,
            false,
            &["CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"],
        );
        exec(&mut old, false, &["INSERT INTO t VALUES (1, 'committed')"]);
        old.set_role(Role::Writer, 1, "w".into(), "u".into(), 3)
            .unwrap();
        ship(&mut old, &mut new);
        exec(&mut old, false, &["INSERT INTO t VALUES (2, 'lost')"]);
        exec(
            &mut old,
            false,
            &["UPDATE t SET v = 'changed' WHERE id = 1"],
        );
        assert_eq!(old.last_index, 5);
        // The other store wins term 2 and writes.
        new.set_role(Role::Writer, 2, "n".into(), "u2".into(), 0)
            .unwrap();
        exec(&mut new, false, &["INSERT INTO t VALUES (3, 'new')"]);
        old.set_role(Role::Replica, 2, "n".into(), "u2".into(), 0)
            .unwrap();
        let q = "SELECT id || ':' || v FROM t ORDER BY id";
        assert_eq!(rows(&old, q), vec!["1:committed"]);
        assert_eq!(old.meta.applied, 3);
        new.set_role(Role::Writer, 2, "n".into(), "u2".into(), 5)
            .unwrap();
        let st = ship(&mut new, &mut old);
        assert_eq!((st.last_index, st.last_term, st.commit), (5, 2, 5));
        assert_eq!(rows(&old, q), vec!["1:committed", "3:new"]);
        assert_eq!(rows(&old, q), rows(&new, q));
    }

    /// What cannot replicate is refused with the rule, and changes nothing.
    #[test]
    fn untrackable_statements_are_refused_with_the_reason() {
        let d = dir();
        let mut w = writer(&d, 1);
        let a = exec(
            &mut w,
            false,
            &[
                "CREATE TABLE nokey(v TEXT)",
                "CREATE TABLE nullkey(k TEXT PRIMARY KEY, v TEXT)",
                "CREATE TABLE t(id INTEGER PRIMARY KEY)",
                "CREATE TABLE copy AS SELECT 1 AS id",
                "PRAGMA foreign_keys = OFF",
                "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END",
                "INSERT INTO _base_log VALUES (99, 9, x'')",
                "BEGIN",
                "CREATE TEMP TABLE tmp(id INTEGER PRIMARY KEY)",
            ],
        );
        let err = |k: usize| a.results[k]["error"].as_str().unwrap_or("").to_string();
        assert!(err(0).contains("no PRIMARY KEY"), "{}", err(0));
        assert!(err(1).contains("may hold NULL"), "{}", err(1));
        assert!(a.results[2].get("error").is_none());
        assert!(err(3).contains("AS SELECT"), "{}", err(3));
        assert!(err(4).contains("PRAGMA"), "{}", err(4));
        assert!(err(5).contains("TRIGGER"), "{}", err(5));
        assert!(err(6).contains("_base_"), "{}", err(6));
        assert!(err(7).contains("transaction"), "{}", err(7));
        assert!(err(8).contains("temporary"), "{}", err(8));
        let tables = rows(
            &w,
            "SELECT name FROM sqlite_schema WHERE type IN ('table','trigger') AND name NOT LIKE '\\_base\\_%' ESCAPE '\\'",
        );
        assert_eq!(tables, vec!["t"]);
        // With ?transaction the first failure undoes the request.
        let a = exec(
            &mut w,
            true,
            &["INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (1)"],
        );
        assert!(a.results[1].get("error").is_some());
        assert_eq!(rows(&w, "SELECT count(*) || '' FROM t"), vec!["0"]);
        assert_eq!(a.index, w.last_index);
    }

    /// `CREATE TABLE IF NOT EXISTS` of a table that exists and holds rows is a no-op, not an
    /// `AS SELECT` (found on real pods: every client start-up ran it).
    #[test]
    fn create_if_not_exists_of_a_filled_table_is_a_no_op() {
        let d = dir();
        let mut w = writer(&d, 1);
        let create = "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)";
        exec(&mut w, false, &[create, "INSERT INTO t VALUES (1, 'kept')"]);
        let a = exec(
            &mut w,
            false,
            &[create, "CREATE TABLE c AS SELECT * FROM t"],
        );
        assert!(a.results[0].get("error").is_none(), "{:?}", a.results);
        assert!(
            a.results[1]["error"]
                .as_str()
                .is_some_and(|e| e.contains("AS SELECT")),
            "{:?}",
            a.results
        );
        assert_eq!(rows(&w, "SELECT v FROM t"), vec!["kept"]);
    }

    /// A replica far behind gets a snapshot holding exactly the committed entries, installed
    /// atomically; the log goes on from there; a restart recovers it all.
    #[test]
    fn snapshots_carry_exactly_the_committed_state_and_survive_restart() {
        let (dw, dr) = (dir(), dir());
        let mut w = Store::open(&dw, 2).unwrap();
        w.set_role(Role::Writer, 1, "w".into(), "u".into(), 0)
            .unwrap();
        exec(
            &mut w,
            false,
            &["CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)"],
        );
        for k in 0..40 {
            exec(
                &mut w,
                false,
                &[&format!("INSERT INTO t VALUES ({k}, {k})")],
            );
        }
        let c = w.last_index;
        w.set_role(Role::Writer, 1, "w".into(), "u".into(), c)
            .unwrap();
        exec(&mut w, false, &["INSERT INTO t VALUES (100, 0)"]);
        assert!(w.meta.base_index > 0, "compacted");
        let mut r = Store::open(&dr, 2).unwrap();
        let served = w.serve_log(pos(0, 0), 1 << 20).unwrap();
        let headers = ShipmentHeaders {
            term: served.term,
            prev: served.prev,
            log_start: served.log_start,
            commit: served.commit,
        };
        let a = r.append(&headers, &served.frames).unwrap();
        assert_eq!(
            a.next,
            Next::FetchSnapshot {
                at_least: served.log_start
            }
        );
        assert_eq!(a.state.epoch, 1);
        let (path, index, term) = w.make_snapshot().unwrap();
        assert_eq!((index, term), (c, 1));
        std::fs::copy(&path, r.incoming_path()).unwrap();
        let gate = std::sync::RwLock::new(());
        let st = r.install_snapshot(1, index, term, &gate, || {}).unwrap();
        assert_eq!((st.commit, st.applied, st.last_index), (c, c, c));
        assert_eq!(st.epoch, 2, "the install is news to the election");
        assert_eq!(rows(&r, "SELECT count(*) || '' FROM t"), vec!["40"]);
        let st = ship(&mut w, &mut r);
        assert_eq!(st.last_index, c + 1);
        drop(r);
        let r = Store::open(&dr, 2).unwrap();
        assert_eq!(r.state().last_index, c + 1);
        assert_eq!(r.state().term, 1);
    }
}

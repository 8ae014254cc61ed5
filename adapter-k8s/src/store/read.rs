//! Reads on connections of their own (WAL lets them run beside the writer), pooled. A snapshot
//! install closes them all first: `gate` is held for reading while a connection is in use.

use super::db::{DB_FILE, StoreError};
use super::sql::{self, Mode, SharedAuth};
use rusqlite::{Connection, OpenFlags};
use serde_json::{Map, Value as Json};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

pub struct Reads {
    path: PathBuf,
    pub gate: RwLock<()>,
    pool: Mutex<Vec<(Connection, SharedAuth)>>,
}

const POOL_MAX: usize = 8;

impl Reads {
    pub fn new(dir: &Path) -> Reads {
        Reads {
            path: dir.join(DB_FILE),
            gate: RwLock::new(()),
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Drops the pooled connections (the caller holds `gate` for writing).
    pub fn close_all(&self) {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn open(&self) -> Result<(Connection, SharedAuth), StoreError> {
        let mut conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let auth = sql::new_auth();
        sql::install_authorizer(&mut conn, &auth)?;
        Ok((conn, auth))
    }

    /// Runs read-only statements in one read transaction (one consistent view).
    pub fn query(&self, stmts: &[sql::Statement], timings: bool) -> Result<Vec<Json>, StoreError> {
        let _open = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let (conn, auth) = match pooled {
            Some(c) => c,
            None => self.open()?,
        };
        sql::set_mode(&auth, Mode::Internal);
        conn.execute_batch("BEGIN")?;
        let results = stmts
            .iter()
            .map(|st| {
                let started = Instant::now();
                match query_one(&conn, &auth, st) {
                    Ok(mut m) => {
                        if timings {
                            m.insert("time".into(), started.elapsed().as_secs_f64().into());
                        }
                        Json::Object(m)
                    }
                    Err(msg) => sql::error_result(msg),
                }
            })
            .collect();
        sql::set_mode(&auth, Mode::Internal);
        conn.execute_batch("COMMIT")?;
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_MAX {
            pool.push((conn, auth));
        }
        Ok(results)
    }
}

fn query_one(
    conn: &Connection,
    auth: &SharedAuth,
    st: &sql::Statement,
) -> Result<Map<String, Json>, String> {
    sql::set_mode(auth, Mode::Query);
    let prepared = conn.prepare(&st.sql);
    let refused = {
        let mut a = auth.lock().unwrap_or_else(|p| p.into_inner());
        a.mode = Mode::Internal;
        a.refused.take()
    };
    let mut stmt = match (prepared, refused) {
        (_, Some(why)) => return Err(why),
        (Err(e), None) => return Err(e.to_string()),
        (Ok(s), None) => s,
    };
    if !stmt.readonly() {
        return Err("the statement is not read-only: send writes to /db/execute".into());
    }
    sql::bind(&mut stmt, &st.params)?;
    let columns: Vec<Json> = stmt.column_names().map(Json::from).collect();
    let mut types: Vec<String> = stmt
        .columns()
        .map(|c| c.decl_type().unwrap_or_default().to_ascii_lowercase())
        .collect();
    let n = columns.len();
    let mut values = Vec::new();
    let mut rows = stmt.raw_query();
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        let mut vals = Vec::with_capacity(n);
        for (c, ty) in types.iter_mut().enumerate() {
            let v = row.get_ref(c).map_err(|e| e.to_string())?;
            if ty.is_empty() {
                *ty = sql::type_name(v).to_string();
            }
            vals.push(sql::to_json(v));
        }
        values.push(Json::Array(vals));
    }
    let mut m = Map::new();
    m.insert("columns".into(), Json::Array(columns));
    m.insert(
        "types".into(),
        Json::Array(types.into_iter().map(Json::from).collect()),
    );
    if !values.is_empty() {
        m.insert("values".into(), Json::Array(values));
    }
    Ok(m)
}

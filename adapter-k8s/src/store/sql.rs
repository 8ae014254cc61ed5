//! rqlite's data API on SQLite: the statements of a request (`"sql"` or `["sql", params…]`), the
//! values of results, and the authorizer that keeps statements within what replicates.

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::{Value as Sql, ValueRef};
use serde_json::{Map, Number, Value as Json};
use std::sync::{Arc, Mutex};

/// The prefix of the store's own tables (`_base_log`, `_base_meta`): reserved.
pub const INTERNAL_PREFIX: &str = "_base_";

pub fn is_internal(table: &str) -> bool {
    table.starts_with(INTERNAL_PREFIX) || table.starts_with("sqlite_")
}

#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    Positional(Vec<Sql>),
    Named(Vec<(String, Sql)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Params,
}

impl Statement {
    pub fn plain(sql: impl Into<String>) -> Self {
        Statement {
            sql: sql.into(),
            params: Params::Positional(Vec::new()),
        }
    }
    pub fn has_params(&self) -> bool {
        match &self.params {
            Params::Positional(p) => !p.is_empty(),
            Params::Named(p) => !p.is_empty(),
        }
    }
}

fn to_sql(v: &Json, at: &str) -> Result<Sql, String> {
    Ok(match v {
        Json::Null => Sql::Null,
        Json::Bool(b) => Sql::Integer(i64::from(*b)),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Sql::Integer(i),
            (None, Some(f)) => Sql::Real(f),
            (None, None) => return Err(format!("{at}: the number {n} does not fit SQLite")),
        },
        Json::String(s) => Sql::Text(s.clone()),
        Json::Array(_) | Json::Object(_) => {
            return Err(format!(
                "{at}: arrays and objects cannot be bound (bind a string, number, bool or null)"
            ));
        }
    })
}

/// The body of `POST /db/execute` or `POST /db/query`. Any malformed part refuses the whole
/// request (nothing runs), naming the element.
pub fn parse_statements(body: &[u8]) -> Result<Vec<Statement>, String> {
    let value: Json =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Json::Array(items) = value else {
        return Err("the body must be a JSON array of statements".into());
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("statement {i}");
        match item {
            Json::String(sql) => out.push(Statement::plain(sql.clone())),
            Json::Array(parts) => {
                let Some(Json::String(sql)) = parts.first() else {
                    return Err(format!(
                        "{at}: an array statement starts with its SQL string"
                    ));
                };
                let params = match &parts[1..] {
                    [Json::Object(named)] => Params::Named(
                        named
                            .iter()
                            .map(|(k, v)| Ok((k.clone(), to_sql(v, &format!("{at}, :{k}"))?)))
                            .collect::<Result<_, String>>()?,
                    ),
                    rest => Params::Positional(
                        rest.iter()
                            .enumerate()
                            .map(|(p, v)| to_sql(v, &format!("{at}, parameter {}", p + 1)))
                            .collect::<Result<_, String>>()?,
                    ),
                };
                out.push(Statement {
                    sql: sql.clone(),
                    params,
                });
            }
            _ => return Err(format!("{at}: a statement is a string or an array")),
        }
    }
    Ok(out)
}

pub fn bind(stmt: &mut rusqlite::Statement<'_>, params: &Params) -> Result<(), String> {
    match params {
        Params::Positional(values) => {
            if values.len() != stmt.parameter_count() {
                return Err(format!(
                    "{} parameters given, the statement has {}",
                    values.len(),
                    stmt.parameter_count()
                ));
            }
            for (i, v) in values.iter().enumerate() {
                stmt.raw_bind_parameter(i + 1, v)
                    .map_err(|e| e.to_string())?;
            }
        }
        Params::Named(values) => {
            for (name, v) in values {
                let mut found = None;
                for prefix in [":", "@", "$"] {
                    let key = [prefix, name.as_str()].concat();
                    if let Some(ix) = stmt.parameter_index(&key).map_err(|e| e.to_string())? {
                        found = Some(ix);
                        break;
                    }
                }
                let Some(ix) = found else {
                    return Err(format!("the statement has no parameter named {name}"));
                };
                stmt.raw_bind_parameter(ix, v).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// rqlite answers blobs as standard base64.
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn to_json(v: ValueRef<'_>) -> Json {
    match v {
        ValueRef::Null => Json::Null,
        ValueRef::Integer(i) => Json::from(i),
        ValueRef::Real(f) => Number::from_f64(f).map_or(Json::Null, Json::Number),
        ValueRef::Text(t) => Json::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Json::String(base64(b)),
    }
}

pub fn type_name(v: ValueRef<'_>) -> &'static str {
    match v {
        ValueRef::Null => "",
        ValueRef::Integer(_) => "integer",
        ValueRef::Real(_) => "real",
        ValueRef::Text(_) => "text",
        ValueRef::Blob(_) => "blob",
    }
}

pub fn error_result(message: impl Into<String>) -> Json {
    let mut m = Map::new();
    m.insert("error".into(), Json::String(message.into()));
    Json::Object(m)
}

/// Who is preparing statements on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The store itself: anything goes.
    Internal,
    /// A client's `/db/execute` statement on the writer.
    Execute,
    /// A client's `/db/query` statement.
    Query,
}

/// What the authorizer saw while a client statement was prepared.
#[derive(Debug)]
pub struct Auth {
    pub mode: Mode,
    /// Why the statement was refused, if it was.
    pub refused: Option<String>,
    /// It changes the schema: it replicates as its text.
    pub ddl: bool,
    /// Tables it creates (checked afterwards: primary key, empty).
    pub created: Vec<String>,
}

pub type SharedAuth = Arc<Mutex<Auth>>;

pub fn new_auth() -> SharedAuth {
    Arc::new(Mutex::new(Auth {
        mode: Mode::Internal,
        refused: None,
        ddl: false,
        created: Vec::new(),
    }))
}

/// Sets the mode for the next statements and forgets what was seen.
pub fn set_mode(auth: &SharedAuth, mode: Mode) {
    let mut a = auth.lock().unwrap_or_else(|p| p.into_inner());
    a.mode = mode;
    a.refused = None;
    a.ddl = false;
    a.created.clear();
}

/// Read-only pragmas a client may query (schema introspection).
const QUERY_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
];

fn refusal(action: &AuthAction<'_>, mode: Mode) -> Option<String> {
    use AuthAction as A;
    let reserved = |t: &str| {
        t.starts_with(INTERNAL_PREFIX).then(|| {
            format!("table {t}: names starting with {INTERNAL_PREFIX} belong to the store's log")
        })
    };
    match *action {
        A::Read { table_name, .. }
        | A::Insert { table_name }
        | A::Update { table_name, .. }
        | A::Delete { table_name }
        | A::CreateTable { table_name }
        | A::DropTable { table_name }
        | A::CreateIndex { table_name, .. }
        | A::DropIndex { table_name, .. }
        | A::AlterTable { table_name, .. } => reserved(table_name),
        A::Pragma { pragma_name, .. } => {
            if mode == Mode::Query
                && QUERY_PRAGMAS.contains(&pragma_name.to_ascii_lowercase().as_str())
            {
                None
            } else {
                Some(format!(
                    "PRAGMA {pragma_name} is refused: pragmas change settings of one connection or \
                     database that do not replicate"
                ))
            }
        }
        A::Transaction { .. } | A::Savepoint { .. } => Some(
            "transaction control is the store's: send the statements in one request with \
             ?transaction to make them all-or-nothing"
                .into(),
        ),
        A::Attach { .. } | A::Detach { .. } => {
            Some("ATTACH and DETACH are refused: other database files do not replicate".into())
        }
        A::CreateTrigger { .. } | A::CreateTempTrigger { .. } => Some(
            "CREATE TRIGGER is refused: a trigger's changes are already in the replicated row \
             images, and replicas would run it a second time"
                .into(),
        ),
        A::CreateVtable { .. } | A::DropVtable { .. } => Some(
            "virtual tables are refused: the session records no row images for them, so they \
             would not replicate"
                .into(),
        ),
        A::CreateTempTable { .. } | A::CreateTempIndex { .. } | A::CreateTempView { .. } => Some(
            "temporary objects are refused: they belong to one connection and do not replicate"
                .into(),
        ),
        _ => None,
    }
}

fn is_ddl(action: &AuthAction<'_>) -> bool {
    use AuthAction as A;
    matches!(
        action,
        A::CreateTable { .. }
            | A::DropTable { .. }
            | A::AlterTable { .. }
            | A::CreateIndex { .. }
            | A::DropIndex { .. }
            | A::CreateView { .. }
            | A::DropView { .. }
            | A::DropTrigger { .. }
            | A::Reindex { .. }
            | A::Analyze { .. }
    )
}

pub fn install_authorizer(
    conn: &mut rusqlite::Connection,
    auth: &SharedAuth,
) -> rusqlite::Result<()> {
    let auth = auth.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        let mut a = auth.lock().unwrap_or_else(|p| p.into_inner());
        if a.mode == Mode::Internal {
            return Authorization::Allow;
        }
        if let Some(why) = refusal(&ctx.action, a.mode) {
            if a.refused.is_none() {
                a.refused = Some(why);
            }
            return Authorization::Deny;
        }
        if is_ddl(&ctx.action) {
            a.ddl = true;
            if let AuthAction::CreateTable { table_name } = ctx.action {
                a.created.push(table_name.to_string());
            }
        }
        Authorization::Allow
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_parse_like_rqlite_and_malformed_ones_are_named() {
        let s = parse_statements(
            br#"["SELECT 1", ["INSERT INTO t VALUES(?, ?)", 1, "a"], ["INSERT INTO t VALUES(:x)", {"x": 2.5}]]"#,
        )
        .unwrap();
        assert_eq!(s[0], Statement::plain("SELECT 1"));
        assert_eq!(
            s[1].params,
            Params::Positional(vec![Sql::Integer(1), Sql::Text("a".into())])
        );
        assert_eq!(
            s[2].params,
            Params::Named(vec![("x".into(), Sql::Real(2.5))])
        );
        assert!(parse_statements(b"{").unwrap_err().contains("not JSON"));
        assert!(parse_statements(b"{}").unwrap_err().contains("array"));
        assert!(
            parse_statements(br#"["a", 3]"#)
                .unwrap_err()
                .starts_with("statement 1")
        );
        assert!(
            parse_statements(br#"[["x", [1]]]"#)
                .unwrap_err()
                .contains("parameter 1")
        );
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xff, 0xfe, 0xfd, 0x00]), "//79AA==");
    }
}

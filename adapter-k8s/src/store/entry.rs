//! The bytes of a log entry and of a shipment of entries (`application/x-base-log`).
//!
//! An entry's payload is a list of operations, each `kind: u8 | length: u32 BE | bytes`: a
//! changeset (row images recorded by the SQLite session, so values computed on the writer —
//! `random()`, `datetime('now')`, rowids — replicate as they were) or a DDL statement (which the
//! session cannot record; replayed as text). An empty payload is a no-op entry (a new writer's
//! first entry of its term). A shipment is entries framed `index: u64 BE | term: u64 BE |
//! length: u32 BE | payload`.

const KIND_CHANGESET: u8 = 1;
const KIND_DDL: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Changeset(Vec<u8>),
    Ddl(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("unknown operation kind {0}")]
    UnknownKind(u8),
    #[error("a DDL operation is not UTF-8")]
    NotUtf8,
    #[error("an operation or entry is larger than 4 GiB")]
    TooLarge,
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<(), FrameError> {
    let len = u32::try_from(len).map_err(|_| FrameError::TooLarge)?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

pub fn encode_ops(ops: &[Op]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(ops.iter().map(|op| 5 + op_len(op)).sum());
    for op in ops {
        let (kind, bytes) = match op {
            Op::Changeset(cs) => (KIND_CHANGESET, cs.as_slice()),
            Op::Ddl(sql) => (KIND_DDL, sql.as_bytes()),
        };
        out.push(kind);
        put_len(&mut out, bytes.len())?;
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

fn op_len(op: &Op) -> usize {
    match op {
        Op::Changeset(cs) => cs.len(),
        Op::Ddl(sql) => sql.len(),
    }
}

/// A cursor over big-endian fields.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        let b = self.take(8, what)?;
        Ok(u64::from_be_bytes(
            b.try_into().map_err(|_| FrameError::Truncated(what))?,
        ))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes(
            b.try_into().map_err(|_| FrameError::Truncated(what))?,
        ))
    }
}

pub fn decode_ops(bytes: &[u8]) -> Result<Vec<Op>, FrameError> {
    let mut r = Reader(bytes);
    let mut ops = Vec::new();
    while !r.0.is_empty() {
        let kind = r.take(1, "operation kind")?[0];
        let len = r.u32("operation length")? as usize;
        let body = r.take(len, "operation")?;
        ops.push(match kind {
            KIND_CHANGESET => Op::Changeset(body.to_vec()),
            KIND_DDL => Op::Ddl(String::from_utf8(body.to_vec()).map_err(|_| FrameError::NotUtf8)?),
            other => return Err(FrameError::UnknownKind(other)),
        });
    }
    Ok(ops)
}

pub fn frame_len(e: &Entry) -> usize {
    20 + e.payload.len()
}

pub fn encode_frame(out: &mut Vec<u8>, e: &Entry) -> Result<(), FrameError> {
    out.extend_from_slice(&e.index.to_be_bytes());
    out.extend_from_slice(&e.term.to_be_bytes());
    put_len(out, e.payload.len())?;
    out.extend_from_slice(&e.payload);
    Ok(())
}

pub fn decode_frames(bytes: &[u8]) -> Result<Vec<Entry>, FrameError> {
    let mut r = Reader(bytes);
    let mut entries = Vec::new();
    while !r.0.is_empty() {
        let index = r.u64("entry index")?;
        let term = r.u64("entry term")?;
        let len = r.u32("entry length")? as usize;
        let payload = r.take(len, "entry payload")?.to_vec();
        entries.push(Entry {
            index,
            term,
            payload,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_and_frames_round_trip_and_truncation_is_an_error() {
        let ops = vec![
            Op::Changeset(vec![1, 2, 3]),
            Op::Ddl("CREATE TABLE t(id INTEGER PRIMARY KEY)".into()),
            Op::Changeset(vec![]),
        ];
        let payload = encode_ops(&ops).unwrap();
        assert_eq!(decode_ops(&payload).unwrap(), ops);
        assert!(decode_ops(&payload[..payload.len() - 1]).is_err());
        assert_eq!(
            decode_ops(&[9, 0, 0, 0, 0]),
            Err(FrameError::UnknownKind(9))
        );

        let entries = vec![
            Entry {
                index: 7,
                term: 2,
                payload,
            },
            Entry {
                index: 8,
                term: 3,
                payload: vec![],
            },
        ];
        let mut out = Vec::new();
        for e in &entries {
            encode_frame(&mut out, e).unwrap();
        }
        assert_eq!(out.len(), entries.iter().map(frame_len).sum::<usize>());
        assert_eq!(decode_frames(&out).unwrap(), entries);
        for cut in [1, 8, 19, out.len() - 1] {
            assert!(decode_frames(&out[..cut]).is_err(), "cut at {cut}");
        }
    }
}

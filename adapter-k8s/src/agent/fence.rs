//! Fencing and transfer requests from the pod's annotations (`--fence-file`): the Kubernetes
//! downward API writes the pod's annotations to a file, one `key="value"` per line with the value
//! quoted as Go's `%q` does. The replica is fenced while it holds `hanzo.ai/fenced="true"`;
//! `hanzo.ai/transfer-to` carries the operator's transfer request (`base_core::control`). The
//! file is re-read every [`FENCE_POLL`]. A missing or unreadable file means "not fenced, no
//! request", with a warning (once per change).
//!
//! A fenced replica accepts no writes and does not stand for election (see
//! `base_core::quasar::Input::SetFenced`); it still votes, and keeps serving reads and staying
//! ready, so fencing takes a replica out of the writer's seat, not out of the read pool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// The annotation the operator sets on a fenced pod.
pub use base_core::agent::ANNOTATION_FENCED as FENCE_ANNOTATION;
/// What the agent reads from its pod's annotations (the core machine's input).
pub use base_core::agent::Annotations as PodAnnotations;
/// How often the annotations file is re-read.
pub const FENCE_POLL: Duration = Duration::from_secs(1);
/// Kubernetes caps all annotations of an object at 256 KiB; a larger file is not ours.
const ANNOTATIONS_BYTES_MAX: u64 = 1024 * 1024;

/// Parses a downward-API annotations file. Lines that are not `key="value"` are skipped.
pub fn parse_annotations(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            Some((key.trim().to_string(), go_unquote(value.trim())?))
        })
        .collect()
}

/// Undoes Go's `strconv.Quote`: `"…"` with `\a \b \f \n \r \t \v \\ \" \' \xHH \ooo \uHHHH
/// \UHHHHHHHH` escapes. `None` if `s` is not such a string.
pub fn go_unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out: Vec<u8> = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    let hex = |chars: &mut std::str::Chars<'_>, n: usize| -> Option<u32> {
        let digits: String = chars.by_ref().take(n).collect();
        if digits.len() != n {
            return None;
        }
        u32::from_str_radix(&digits, 16).ok()
    };
    let push_char = |out: &mut Vec<u8>, c: char| {
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => return None,
            '\\' => match chars.next()? {
                'a' => out.push(0x07),
                'b' => out.push(0x08),
                'f' => out.push(0x0c),
                'n' => out.push(b'\n'),
                'r' => out.push(b'\r'),
                't' => out.push(b'\t'),
                'v' => out.push(0x0b),
                '\\' => out.push(b'\\'),
                '"' => out.push(b'"'),
                '\'' => out.push(b'\''),
                'x' => out.push(u8::try_from(hex(&mut chars, 2)?).ok()?),
                'u' => push_char(&mut out, char::from_u32(hex(&mut chars, 4)?)?),
                'U' => push_char(&mut out, char::from_u32(hex(&mut chars, 8)?)?),
                d @ '0'..='7' => {
                    let rest: String = chars.by_ref().take(2).collect();
                    let value = u32::from_str_radix(&format!("{d}{rest}"), 8).ok()?;
                    if rest.len() != 2 {
                        return None;
                    }
                    out.push(u8::try_from(value).ok()?);
                }
                _ => return None,
            },
            c => push_char(&mut out, c),
        }
    }
    String::from_utf8(out).ok()
}

/// Why the fence could not be read (the node then counts as not fenced).
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("--fence-file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--fence-file {path}: {len} bytes is too large for an annotations file")]
    TooLarge { path: PathBuf, len: u64 },
}

/// Reads the annotations file: the fence (`true` only for the value `true`, trimmed, any case)
/// and the transfer request.
pub fn read_annotations(path: &Path) -> Result<PodAnnotations, FenceError> {
    let io = |source| FenceError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > ANNOTATIONS_BYTES_MAX {
        return Err(FenceError::TooLarge {
            path: path.to_path_buf(),
            len,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    Ok(PodAnnotations::from_map(&parse_annotations(&text)))
}

/// Is the replica fenced according to the annotations file?
pub fn read_fence(path: &Path) -> Result<bool, FenceError> {
    read_annotations(path).map(|a| a.fenced)
}

/// Reads the annotations, logging a change of the fence; an unreadable file counts as not fenced
/// and no request. `last` holds the fence read before (`None` before the first read), `Err(())`
/// if unreadable.
pub fn read_and_log(path: &Path, last: &mut Option<Result<bool, ()>>) -> PodAnnotations {
    let read = read_annotations(path);
    let now = read.as_ref().map(|a| a.fenced);
    let summary = now.as_ref().map(|f| *f).map_err(|_| ());
    if last.as_ref() != Some(&summary) {
        match &now {
            Ok(true) => {
                tracing::warn!(file = %path.display(), "fenced: no writes, not standing for election (reads go on)")
            }
            Ok(false) if last.is_some() => {
                tracing::info!(file = %path.display(), "no longer fenced")
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the fence file; not fenced"),
        }
        *last = Some(summary);
    }
    read.unwrap_or_default()
}

/// Re-reads the annotations file every [`FENCE_POLL`] and sends its content to the driver
/// whenever it changed.
pub async fn watch(
    path: PathBuf,
    mut last: Option<Result<bool, ()>>,
    mut seen: PodAnnotations,
    control: mpsc::Sender<super::driver::Control>,
) {
    let mut interval = tokio::time::interval(FENCE_POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        let now = {
            let path = path.clone();
            let mut fence_seen = last;
            match tokio::task::spawn_blocking(move || {
                let now = read_and_log(&path, &mut fence_seen);
                (now, fence_seen)
            })
            .await
            {
                Ok((now, fence_seen)) => {
                    last = fence_seen;
                    now
                }
                Err(_) => continue,
            }
        };
        if now == seen {
            continue;
        }
        seen = now.clone();
        if control
            .send(super::driver::Control::Annotations(now))
            .await
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_downward_api_annotations() {
        let text = concat!(
            "hanzo.ai/base=\"app\"\n",
            "hanzo.ai/fenced=\"true\"\n",
            "kubectl.kubernetes.io/last-applied-configuration=\"{\\\"a\\\":\\\"b\\\\n\\\"}\\n\"\n",
            "odd line\n",
        );
        let a = parse_annotations(text);
        assert_eq!(a["hanzo.ai/fenced"], "true");
        assert_eq!(a["hanzo.ai/base"], "app");
        assert_eq!(
            a["kubectl.kubernetes.io/last-applied-configuration"],
            "{\"a\":\"b\\n\"}\n"
        );
        assert_eq!(a.len(), 3);
    }

    #[test]
    fn unquotes_like_go() {
        assert_eq!(
            go_unquote(r#""a\tb\x41\u00e9\U0001F600\101""#).unwrap(),
            "a\tbAé😀A"
        );
        assert_eq!(go_unquote(r#""""#).unwrap(), "");
        assert!(go_unquote("true").is_none());
        assert!(go_unquote(r#""a"b""#).is_none());
        assert!(go_unquote(r#""\q""#).is_none());
        assert!(go_unquote(r#""\x4""#).is_none());
    }

    #[test]
    fn fence_file() {
        let dir = std::env::temp_dir().join(format!("quasar-fence-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("annotations");
        assert!(read_fence(&f).is_err());
        let mut last = None;
        assert_eq!(read_and_log(&f, &mut last), PodAnnotations::default());
        std::fs::write(&f, "hanzo.ai/fenced=\"true\"\n").unwrap();
        assert!(read_fence(&f).unwrap());
        assert!(read_and_log(&f, &mut last).fenced);
        std::fs::write(&f, "hanzo.ai/transfer-to=\"{\\\"to\\\":\\\"b\\\"}\"\n").unwrap();
        assert_eq!(
            read_annotations(&f).unwrap().transfer.as_deref(),
            Some(r#"{"to":"b"}"#)
        );
        std::fs::write(&f, "hanzo.ai/fenced=\"false\"\n").unwrap();
        assert!(!read_fence(&f).unwrap());
        std::fs::write(&f, "other=\"true\"\n").unwrap();
        assert!(!read_fence(&f).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

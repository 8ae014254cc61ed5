//! `kubectl base fence|unfence NAME [POD|--all]`: edits the JSON list in
//! `hanzo.ai/fenced-instances` (like CloudNativePG's `cnpg.io/fencedInstances`). `["*"]` fences
//! every replica; an empty list removes the annotation. Every edit is idempotent.

use super::target::{BaseRef, pods_of};
use super::{ANNOTATION_FENCED_INSTANCES, PluginError};
use kube::{Client, ResourceExt};
use std::io::Write;

#[derive(clap::Args, Debug)]
pub struct FenceArgs {
    /// The Base.
    pub name: String,
    /// The pod (replica), e.g. my-app-1.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub pod: Option<String>,
    /// Every replica of the Base (`["*"]`).
    #[arg(long)]
    pub all: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Fence,
    Unfence,
}

/// Which replicas a command names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Which {
    Pod(String),
    All,
}

/// How an edit of the list ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Nothing to do; the text says why.
    Unchanged(String),
    /// The new list; empty means: remove the annotation.
    Set(Vec<String>),
}

/// Why a list cannot be edited as asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EditError {
    /// The current annotation is not a JSON list of strings.
    Unreadable(String),
    /// Unfencing one pod while `"*"` fences all of them.
    OneOfAll,
}

/// Reads the annotation's value: a JSON list of strings; `null`, `""` and `[]` are empty.
pub fn parse_list(raw: Option<&str>) -> Result<Vec<String>, String> {
    let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(Vec::new());
    };
    let list: Option<Vec<String>> = serde_json::from_str(raw).map_err(|e| e.to_string())?;
    Ok(list.unwrap_or_default())
}

/// The list after fencing or unfencing `which`, from the annotation's current value.
pub fn edit(current: Option<&str>, op: Op, which: &Which) -> Result<Edit, EditError> {
    let list = parse_list(current);
    match (op, which) {
        (Op::Fence, Which::All) => Ok(match list {
            Ok(l) if l == ["*"] => Edit::Unchanged("every instance is already fenced".into()),
            _ => Edit::Set(vec!["*".into()]),
        }),
        (Op::Unfence, Which::All) => Ok(if current.is_none() {
            Edit::Unchanged("no instance is fenced".into())
        } else {
            Edit::Set(Vec::new())
        }),
        (Op::Fence, Which::Pod(pod)) => {
            let mut l = list.map_err(EditError::Unreadable)?;
            if l.iter().any(|p| p == "*") {
                return Ok(Edit::Unchanged(format!(
                    "{pod} is already fenced (every instance is)"
                )));
            }
            if l.contains(pod) {
                return Ok(Edit::Unchanged(format!("{pod} is already fenced")));
            }
            l.push(pod.clone());
            l.sort();
            l.dedup();
            Ok(Edit::Set(l))
        }
        (Op::Unfence, Which::Pod(pod)) => {
            let l = list.map_err(EditError::Unreadable)?;
            if l.iter().any(|p| p == "*") {
                return Err(EditError::OneOfAll);
            }
            if !l.contains(pod) {
                return Ok(Edit::Unchanged(format!("{pod} is not fenced")));
            }
            Ok(Edit::Set(l.into_iter().filter(|p| p != pod).collect()))
        }
    }
}

/// The annotation value for a list (`None`: remove it).
pub fn value_of(list: &[String]) -> Option<String> {
    if list.is_empty() {
        None
    } else {
        serde_json::to_string(list).ok()
    }
}

pub async fn run(
    client: &Client,
    namespace: &str,
    args: &FenceArgs,
    op: Op,
    out: &mut dyn Write,
) -> Result<(), PluginError> {
    let mut base = BaseRef::get(client, namespace, &args.name).await?;
    let which = match &args.pod {
        Some(pod) if !args.all => Which::Pod(pod.clone()),
        _ => Which::All,
    };
    if let Which::Pod(pod) = &which {
        // A pod that is listed may always be unfenced (it may be gone); any other must be ours.
        let listed =
            parse_list(base.annotation(ANNOTATION_FENCED_INSTANCES)).is_ok_and(|l| l.contains(pod));
        if !(op == Op::Unfence && listed) {
            let pods = pods_of(client, &base).await?;
            if !pods.iter().any(|p| p.name_any() == *pod) {
                return Err(base.not_a_pod(pod, &pods));
            }
        }
    }
    let mut note = String::new();
    let changed = base
        .edit_annotation(ANNOTATION_FENCED_INSTANCES, |b| {
            match edit(b.annotation(ANNOTATION_FENCED_INSTANCES), op, &which) {
                Ok(Edit::Unchanged(why)) => {
                    note = why;
                    Ok(None)
                }
                Ok(Edit::Set(list)) => Ok(Some(value_of(&list))),
                Err(EditError::Unreadable(problem)) => Err(PluginError::BadAnnotation {
                    key: ANNOTATION_FENCED_INSTANCES,
                    base: b.name.clone(),
                    namespace: b.namespace.clone(),
                    problem,
                }),
                Err(EditError::OneOfAll) => Err(PluginError::UnfenceOneOfAll {
                    base: b.name.clone(),
                    namespace: b.namespace.clone(),
                }),
            }
        })
        .await?;
    let subject = match &which {
        Which::Pod(p) => p.clone(),
        Which::All => format!("every instance of {}", base.name),
    };
    let now = base
        .annotation(ANNOTATION_FENCED_INSTANCES)
        .unwrap_or("(none)");
    if changed {
        let verb = match op {
            Op::Fence => "fenced",
            Op::Unfence => "unfenced",
        };
        writeln!(
            out,
            "{kind} {ns}/{name}: {subject} {verb}; {ANNOTATION_FENCED_INSTANCES}: {now}",
            kind = base.kind,
            ns = base.namespace,
            name = base.name,
        )?;
    } else {
        writeln!(
            out,
            "{kind} {ns}/{name}: {note}; nothing changed ({ANNOTATION_FENCED_INSTANCES}: {now})",
            kind = base.kind,
            ns = base.namespace,
            name = base.name,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(p: &str) -> Which {
        Which::Pod(p.into())
    }
    fn set(l: &[&str]) -> Result<Edit, EditError> {
        Ok(Edit::Set(l.iter().map(|s| s.to_string()).collect()))
    }

    #[test]
    fn fencing_one_pod() {
        assert_eq!(edit(None, Op::Fence, &pod("a-1")), set(&["a-1"]));
        assert_eq!(
            edit(Some(r#"["a-2"]"#), Op::Fence, &pod("a-1")),
            set(&["a-1", "a-2"])
        );
        assert!(matches!(
            edit(Some(r#"["a-1"]"#), Op::Fence, &pod("a-1")),
            Ok(Edit::Unchanged(_))
        ));
        assert!(matches!(
            edit(Some(r#"["*"]"#), Op::Fence, &pod("a-1")),
            Ok(Edit::Unchanged(_))
        ));
        assert!(matches!(
            edit(Some("a-1"), Op::Fence, &pod("a-1")),
            Err(EditError::Unreadable(_))
        ));
        assert!(matches!(
            edit(Some(r#"{"a":1}"#), Op::Fence, &pod("a-1")),
            Err(EditError::Unreadable(_))
        ));
        assert_eq!(edit(Some(""), Op::Fence, &pod("a-0")), set(&["a-0"]));
        assert_eq!(edit(Some("null"), Op::Fence, &pod("a-0")), set(&["a-0"]));
    }

    #[test]
    fn unfencing_one_pod() {
        assert_eq!(
            edit(Some(r#"["a-1","a-2"]"#), Op::Unfence, &pod("a-1")),
            set(&["a-2"])
        );
        assert_eq!(edit(Some(r#"["a-1"]"#), Op::Unfence, &pod("a-1")), set(&[]));
        assert!(matches!(
            edit(None, Op::Unfence, &pod("a-1")),
            Ok(Edit::Unchanged(_))
        ));
        assert_eq!(
            edit(Some(r#"["*"]"#), Op::Unfence, &pod("a-1")),
            Err(EditError::OneOfAll)
        );
    }

    #[test]
    fn all() {
        assert_eq!(edit(None, Op::Fence, &Which::All), set(&["*"]));
        assert_eq!(edit(Some("junk"), Op::Fence, &Which::All), set(&["*"]));
        assert!(matches!(
            edit(Some(r#"["*"]"#), Op::Fence, &Which::All),
            Ok(Edit::Unchanged(_))
        ));
        assert_eq!(edit(Some(r#"["*"]"#), Op::Unfence, &Which::All), set(&[]));
        assert_eq!(edit(Some("junk"), Op::Unfence, &Which::All), set(&[]));
        assert!(matches!(
            edit(None, Op::Unfence, &Which::All),
            Ok(Edit::Unchanged(_))
        ));
        assert_eq!(value_of(&[]), None);
        assert_eq!(value_of(&["a".into()]).as_deref(), Some(r#"["a"]"#));
    }
}

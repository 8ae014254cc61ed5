//! Finding the Base (or legacy BaseApp) a command names, its pods, and editing its annotations
//! with merge patches guarded by resourceVersion.

use super::{LABEL_BASE, MAX_CONFLICT_RETRIES, PluginError};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

/// The object a command works on, as last read.
pub struct BaseRef {
    pub api: Api<DynamicObject>,
    /// `Base`, or `BaseApp` for a legacy object.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub obj: DynamicObject,
}

fn api_for(client: &Client, namespace: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(base_core::crd::GROUP, base_core::crd::VERSION, kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
    Api::namespaced_with(client.clone(), namespace, &ar)
}

impl BaseRef {
    /// Reads the Base `name`; a legacy `BaseApp` of that name is taken when there is no Base.
    pub async fn get(client: &Client, namespace: &str, name: &str) -> Result<BaseRef, PluginError> {
        for (kind, plural) in [("Base", "bases"), ("BaseApp", "baseapps")] {
            let api = api_for(client, namespace, kind, plural);
            match api.get(name).await {
                Ok(obj) => {
                    return Ok(BaseRef {
                        api,
                        kind,
                        namespace: namespace.to_string(),
                        name: name.to_string(),
                        obj,
                    });
                }
                // 404: no such object, or the kind is not installed.
                Err(kube::Error::Api(s)) if s.code == 404 => continue,
                // A user allowed Bases but not the legacy kind: there is no Base of that name.
                Err(kube::Error::Api(s)) if s.code == 403 && kind == "BaseApp" => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PluginError::BaseNotFound {
            name: name.to_string(),
            namespace: namespace.to_string(),
        })
    }

    /// Reads the object again.
    pub async fn refresh(&mut self) -> Result<(), PluginError> {
        match self.api.get(&self.name).await {
            Ok(obj) => {
                self.obj = obj;
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Err(PluginError::BaseNotFound {
                name: self.name.clone(),
                namespace: self.namespace.clone(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.obj.annotations().get(key).map(String::as_str)
    }

    pub fn status(&self) -> &Value {
        self.obj.data.get("status").unwrap_or(&Value::Null)
    }

    pub fn spec(&self) -> &Value {
        self.obj.data.get("spec").unwrap_or(&Value::Null)
    }

    /// The agent port (`spec.port`, default 8090).
    pub fn port(&self) -> u16 {
        self.spec()
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .unwrap_or(base_core::crd::DEFAULT_PORT as u16)
    }

    /// Sets (`Some`) or removes (`None`) annotation `key`, deciding the new value with `decide` on
    /// the freshest read. The patch carries the resourceVersion `decide` saw, so a concurrent
    /// change gets 409 and the decision is made again. `decide` answers `None` for "no change".
    pub async fn edit_annotation<F>(
        &mut self,
        key: &str,
        mut decide: F,
    ) -> Result<bool, PluginError>
    where
        F: FnMut(&BaseRef) -> Result<Option<Option<String>>, PluginError>,
    {
        for attempt in 0..=MAX_CONFLICT_RETRIES {
            if attempt > 0 {
                self.refresh().await?;
            }
            let Some(value) = decide(self)? else {
                return Ok(false);
            };
            let patch = json!({"metadata": {
                "resourceVersion": self.obj.resource_version(),
                "annotations": {key: value},
            }});
            match self
                .api
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(obj) => {
                    self.obj = obj;
                    return Ok(true);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    return Err(PluginError::BaseNotFound {
                        name: self.name.clone(),
                        namespace: self.namespace.clone(),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(PluginError::Conflicts {
            base: self.name.clone(),
            tries: MAX_CONFLICT_RETRIES + 1,
        })
    }

    /// The error for a pod that is not one of `pods`.
    pub fn not_a_pod(&self, pod: &str, pods: &[Pod]) -> PluginError {
        let names: Vec<String> = pods.iter().map(ResourceExt::name_any).collect();
        PluginError::NotAPod {
            pod: pod.to_string(),
            base: self.name.clone(),
            namespace: self.namespace.clone(),
            pods: if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            },
        }
    }
}

/// The pods labelled as this Base's, by ordinal (then name).
pub async fn pods_of(client: &Client, base: &BaseRef) -> Result<Vec<Pod>, PluginError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &base.namespace);
    let list = api
        .list(&ListParams::default().labels(&format!("{LABEL_BASE}={}", base.name)))
        .await?;
    let mut pods = list.items;
    pods.sort_by_key(|p| {
        let name = p.name_any();
        let ordinal = name
            .strip_prefix(&base.name)
            .and_then(|s| s.strip_prefix('-'))
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        (ordinal, name)
    });
    Ok(pods)
}

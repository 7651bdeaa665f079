//! A fake Kubernetes API server behind kube's `Client`, built on
//! tower-test's `mock::pair` (the controller-rs fixture pattern), but
//! answering from an in-memory object store instead of a fixed script, so a
//! test can run several reconciles and then assert on the objects, the
//! requests and the events. It implements the parts of the API semantics the
//! operator relies on: get/list, create (409 on conflict), replace and merge
//! patches with `resourceVersion` preconditions (409), server-side apply
//! (create or merge), the status subresource, finalizers holding deletion.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
    next_rv: u64,
    /// API groups this server does not serve (their CRDs are not installed).
    unserved: Vec<String>,
}

#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

fn plural(kind: &str) -> String {
    format!("{}s", kind.to_ascii_lowercase())
}

/// The object's path, e.g. `/apis/strata.dev/v1alpha1/namespaces/ns/topics/t`.
pub fn path_of(api_version: &str, kind: &str, ns: &str, name: &str) -> String {
    let prefix = if api_version.contains('/') { format!("/apis/{api_version}") } else { format!("/api/{api_version}") };
    format!("{prefix}/namespaces/{ns}/{}/{name}", plural(kind))
}

/// A cluster-scoped object's path, e.g. `/api/v1/nodes/n`.
pub fn cluster_scoped_path(api_version: &str, kind: &str, name: &str) -> String {
    let prefix = if api_version.contains('/') { format!("/apis/{api_version}") } else { format!("/api/{api_version}") };
    format!("{prefix}/{}/{name}", plural(kind))
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

/// JSON merge patch (RFC 7386).
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl FakeApi {
    /// A kube client wired to a new fake API server.
    pub fn start() -> (kube::Client, FakeApi) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = FakeApi { state: Arc::default() };
        let server = fake.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let body: Value =
                    if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
                let content_type = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let query = parts.uri.query().unwrap_or_default().to_owned();
                let (code, out) = server.handle(&parts.method, parts.uri.path(), &query, &content_type, body);
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&out).unwrap()))
                    .unwrap();
                send.send_response(response);
            }
        });
        (kube::Client::new(service, "default"), fake)
    }

    /// Stores an object as if a user had applied it.
    pub fn insert(&self, obj: Value) -> Value {
        let mut obj = obj;
        let (api_version, kind, name) = (
            obj["apiVersion"].as_str().unwrap(),
            obj["kind"].as_str().unwrap(),
            obj["metadata"]["name"].as_str().unwrap(),
        );
        let key = match obj["metadata"]["namespace"].as_str() {
            Some(ns) => path_of(api_version, kind, ns, name),
            None => cluster_scoped_path(api_version, kind, name),
        };
        let mut st = self.state.lock().unwrap();
        st.next_rv += 1;
        let rv = st.next_rv;
        let meta = obj["metadata"].as_object_mut().unwrap();
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.entry("uid").or_insert_with(|| json!(format!("uid-{rv}")));
        meta.entry("generation").or_insert(json!(1));
        meta.entry("creationTimestamp").or_insert(json!("2026-01-01T00:00:00Z"));
        st.objects.insert(key, obj.clone());
        obj
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    /// Changes an object's spec like `kubectl apply` would: bumps its generation.
    pub fn update_spec(&self, path: &str, patch: Value) {
        self.update(path, "spec", patch, true);
    }

    /// Sets metadata fields (annotations, ...) without a generation change.
    pub fn update_meta(&self, path: &str, patch: Value) {
        self.update(path, "metadata", patch, false);
    }

    /// Merges `patch` into the object's `field` under a new resource version.
    fn update(&self, path: &str, field: &str, patch: Value, new_generation: bool) {
        let mut st = self.state.lock().unwrap();
        st.next_rv += 1;
        let rv = st.next_rv;
        let obj = st.objects.get_mut(path).expect("object exists");
        merge(&mut obj[field], &patch);
        if new_generation {
            let generation = obj["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            obj["metadata"]["generation"] = json!(generation);
        }
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    }

    /// `kubectl delete`: marks the object deleted (or removes it when no
    /// finalizer holds it).
    pub fn delete(&self, path: &str) {
        let _ = self.handle(&Method::DELETE, path, "", "", Value::Null);
    }

    pub fn remove(&self, path: &str) {
        self.state.lock().unwrap().objects.remove(path);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Reasons of the events posted so far, in order.
    pub fn event_reasons(&self) -> Vec<String> {
        self.events().iter().map(|e| e["reason"].as_str().unwrap_or_default().to_owned()).collect()
    }

    /// Bodies of the events posted so far.
    pub fn events(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.contains("/events") && r.method == Method::POST)
            .map(|r| r.body)
            .collect()
    }

    /// How many times an event with this reason was recorded: kube's
    /// Recorder creates an event once and patches its `series` for repeats.
    pub fn event_count(&self, reason: &str) -> u64 {
        let st = self.state.lock().unwrap();
        st.objects
            .iter()
            .filter(|(k, v)| k.contains("/events/") && v["reason"] == reason)
            .map(|(_, v)| v["series"]["count"].as_u64().unwrap_or(1))
            .sum()
    }

    /// Stops serving an API group (`/apis/<group>/...` answers 404), like a
    /// cluster without that group's CRDs.
    pub fn unserve(&self, group: &str) {
        self.state.lock().unwrap().unserved.push(format!("/apis/{group}/"));
    }

    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }

    fn handle(&self, method: &Method, path: &str, query: &str, content_type: &str, body: Value) -> (StatusCode, Value) {
        let mut st = self.state.lock().unwrap();
        st.requests.push(Recorded {
            method: method.clone(),
            path: path.to_owned(),
            query: query.to_owned(),
            content_type: content_type.to_owned(),
            body: body.clone(),
        });
        if st.unserved.iter().any(|p| path.starts_with(p.as_str())) {
            return (
                StatusCode::NOT_FOUND,
                status_body(404, "NotFound", "the server could not find the requested resource"),
            );
        }
        let (key, status_sub) = match path.strip_suffix("/status") {
            Some(k) => (k.to_owned(), true),
            None => (path.to_owned(), false),
        };
        st.next_rv += 1;
        let rv = st.next_rv.to_string();
        let not_found = || (StatusCode::NOT_FOUND, status_body(404, "NotFound", &format!("{key} not found")));
        let conflict = || (StatusCode::CONFLICT, status_body(409, "Conflict", "the object has been modified"));
        match *method {
            Method::GET => match st.objects.get(&key) {
                Some(o) => (StatusCode::OK, o.clone()),
                None => {
                    let prefix = format!("{key}/");
                    let items: Vec<Value> = st
                        .objects
                        .iter()
                        .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                        .map(|(_, v)| v.clone())
                        .collect();
                    let segments: Vec<&str> = key.split('/').collect();
                    let is_collection =
                        segments.iter().position(|s| *s == "namespaces").is_some_and(|i| segments.len() == i + 3);
                    if is_collection {
                        (
                            StatusCode::OK,
                            json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}),
                        )
                    } else {
                        not_found()
                    }
                }
            },
            Method::POST => {
                let name = body["metadata"]["name"].as_str().map(str::to_owned).unwrap_or_else(|| format!("gen-{rv}"));
                let key = format!("{key}/{name}");
                if st.objects.contains_key(&key) {
                    return (StatusCode::CONFLICT, status_body(409, "AlreadyExists", "already exists"));
                }
                let mut obj = body;
                obj["metadata"]["name"] = json!(name);
                obj["metadata"]["resourceVersion"] = json!(rv);
                st.objects.insert(key, obj.clone());
                (StatusCode::CREATED, obj)
            }
            Method::PUT => {
                let Some(current) = st.objects.get(&key) else { return not_found() };
                if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                    return conflict();
                }
                let mut obj = body;
                obj["metadata"]["resourceVersion"] = json!(rv);
                st.objects.insert(key, obj.clone());
                (StatusCode::OK, obj)
            }
            Method::PATCH => {
                let apply = content_type.starts_with("application/apply-patch");
                let json_patch = content_type.starts_with("application/json-patch");
                let mut obj = match st.objects.get(&key) {
                    Some(o) => o.clone(),
                    None if apply && !status_sub => {
                        let mut o = json!({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z", "uid": format!("uid-{rv}"), "generation": 1}});
                        merge(&mut o, &body);
                        o
                    }
                    None => return not_found(),
                };
                if json_patch {
                    let patch: json_patch::Patch = match serde_json::from_value(body) {
                        Ok(p) => p,
                        Err(e) => return (StatusCode::BAD_REQUEST, status_body(400, "BadRequest", &e.to_string())),
                    };
                    if json_patch::patch(&mut obj, &patch).is_err() {
                        return (
                            StatusCode::UNPROCESSABLE_ENTITY,
                            status_body(422, "Invalid", "json patch test failed"),
                        );
                    }
                } else {
                    if let Some(want) = body["metadata"]["resourceVersion"].as_str()
                        && obj["metadata"]["resourceVersion"].as_str() != Some(want)
                    {
                        return conflict();
                    }
                    if status_sub {
                        merge(&mut obj["status"], &body["status"]);
                    } else {
                        let mut b = body;
                        if apply {
                            if let Some(m) = b.get_mut("metadata").and_then(Value::as_object_mut) {
                                m.remove("resourceVersion");
                            }
                            // Apply owns the status only through the subresource.
                            if let Some(o) = b.as_object_mut() {
                                o.remove("status");
                            }
                        }
                        merge(&mut obj, &b);
                    }
                }
                obj["metadata"]["resourceVersion"] = json!(rv);
                let deleted = obj["metadata"].get("deletionTimestamp").is_some()
                    && obj["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty());
                if deleted {
                    st.objects.remove(&key);
                } else {
                    st.objects.insert(key, obj.clone());
                }
                (StatusCode::OK, obj)
            }
            Method::DELETE => {
                let Some(mut obj) = st.objects.get(&key).cloned() else { return not_found() };
                if obj["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
                    obj["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:01Z");
                    obj["metadata"]["resourceVersion"] = json!(rv);
                    st.objects.insert(key, obj.clone());
                } else {
                    st.objects.remove(&key);
                }
                (StatusCode::OK, obj)
            }
            _ => (StatusCode::METHOD_NOT_ALLOWED, status_body(405, "MethodNotAllowed", "")),
        }
    }
}

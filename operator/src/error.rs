//! The operator's error type. Only Kubernetes API failures are errors: a
//! broker that refuses a spec is reported in status, not raised, so a bad
//! spec never turns into a crash loop.

/// What a reconcile (or the operator's plumbing) fails with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot serialize {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{kind} {name} has no namespace")]
    MissingNamespace { kind: &'static str, name: String },
    #[error("no randomness for a new token: {0}")]
    Random(String),
    #[error("leader election: {0}")]
    Lease(String),
    #[error("cannot serve HTTP on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A short, bounded label for the `error` label of metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "kube",
            Error::Serialize { .. } => "serialize",
            Error::MissingNamespace { .. } => "missing_namespace",
            Error::Random(_) => "random",
            Error::Lease(_) => "lease",
            Error::Listen { .. } => "listen",
        }
    }
}

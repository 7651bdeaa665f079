//! End-to-end tests live in `tests/`; they run against the cluster in
//! `KUBECONFIG` and print `skipped: no KUBECONFIG` without one.

//! Access control lists (DESIGN §4.5): what a principal may do with which
//! resources of its tenant, with Kafka's semantics so Kafka users find what
//! they expect.
//!
//! An [`AclBinding`] grants one principal (or `*`, every principal of the
//! tenant) one [`AclOperation`] on the topics, queues or groups matching a
//! pattern: a literal name (`*` alone matches every name, as in Kafka) or a
//! prefix. There are only grants (no deny entries): a principal that no
//! binding matches is refused. `produce`, `consume` and `admin` imply
//! `describe` on the same resource, and `all` implies every operation, as
//! Kafka's WRITE/READ/ALTER imply DESCRIBE.
//!
//! Bindings live in the replicated catalog; [`Grants`] is the per-principal
//! index built from them whenever they change, so a check is a hash lookup
//! plus a scan of that principal's prefixes, with no allocation.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The principal name that stands for every principal of a tenant.
pub(crate) const ANY_PRINCIPAL: &str = "*";
/// The literal resource name that matches every name (Kafka's wildcard).
pub(crate) const ANY_NAME: &str = "*";

/// What kind of resource a pattern names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Topic,
    Queue,
    Group,
}

impl ResourceKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Topic => "topic",
            ResourceKind::Queue => "queue",
            ResourceKind::Group => "group",
        }
    }
}

/// How a pattern's name matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatternType {
    /// The name itself (or every name, for `*`).
    Literal,
    /// Every name that starts with it.
    Prefixed,
}

/// What a binding allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AclOperation {
    /// Every operation below.
    All,
    /// Write messages (produce, send).
    Produce,
    /// Read messages or move a consumer's position (fetch, receive, ack,
    /// peek, group membership and commits).
    Consume,
    /// Create, change, purge or delete the resource.
    Admin,
    /// Read metadata: describe, list, offsets. Implied by the others.
    Describe,
}

impl AclOperation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AclOperation::All => "all",
            AclOperation::Produce => "produce",
            AclOperation::Consume => "consume",
            AclOperation::Admin => "admin",
            AclOperation::Describe => "describe",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// One grant of a tenant's ACL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclBinding {
    /// A principal of the tenant, or [`ANY_PRINCIPAL`].
    pub principal: String,
    pub kind: ResourceKind,
    pub pattern: PatternType,
    /// The literal name, [`ANY_NAME`], or the prefix.
    pub name: String,
    pub operation: AclOperation,
}

impl AclBinding {
    /// `"alice" produce on topic prefix "orders."`, for messages.
    pub(crate) fn describe(&self) -> String {
        let pattern = match self.pattern {
            PatternType::Literal => "",
            PatternType::Prefixed => " prefix",
        };
        format!("{:?} {} on {}{pattern} {:?}", self.principal, self.operation.as_str(), self.kind.as_str(), self.name)
    }
}

/// A set of operations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct OpSet(u8);

impl OpSet {
    fn with(self, op: AclOperation) -> OpSet {
        OpSet(self.0 | op.bit())
    }

    fn union(self, other: OpSet) -> OpSet {
        OpSet(self.0 | other.0)
    }

    /// Whether holding this set allows `op` (with the implications).
    fn permits(self, op: AclOperation) -> bool {
        if self.0 & (AclOperation::All.bit() | op.bit()) != 0 {
            return true;
        }
        op == AclOperation::Describe && self.0 != 0
    }
}

/// The grants of one kind of resource.
#[derive(Debug, Default)]
struct KindGrants {
    /// From literal `*`.
    any: OpSet,
    literal: HashMap<String, OpSet>,
    /// Distinct prefixes with their operations.
    prefixed: Vec<(String, OpSet)>,
}

impl KindGrants {
    fn ops(&self, name: &str) -> OpSet {
        let mut set = self.any;
        if let Some(s) = self.literal.get(name) {
            set = set.union(*s);
        }
        for (prefix, s) in &self.prefixed {
            if name.starts_with(prefix.as_str()) {
                set = set.union(*s);
            }
        }
        set
    }

    fn any_grant(&self) -> OpSet {
        let mut set = self.any;
        for s in self.literal.values().chain(self.prefixed.iter().map(|(_, s)| s)) {
            set = set.union(*s);
        }
        set
    }
}

/// Everything one principal may do: the matcher the authoriser consults on
/// every request.
#[derive(Debug, Default)]
pub(crate) struct Grants {
    kinds: [KindGrants; 3],
}

impl Grants {
    /// Adds one binding (its principal is not looked at).
    pub(crate) fn add(&mut self, b: &AclBinding) {
        let k = &mut self.kinds[b.kind as usize];
        match b.pattern {
            PatternType::Literal if b.name == ANY_NAME => k.any = k.any.with(b.operation),
            PatternType::Literal => {
                let s = k.literal.entry(b.name.clone()).or_default();
                *s = s.with(b.operation);
            }
            PatternType::Prefixed => match k.prefixed.iter_mut().find(|(p, _)| *p == b.name) {
                Some((_, s)) => *s = s.with(b.operation),
                None => k.prefixed.push((b.name.clone(), OpSet::default().with(b.operation))),
            },
        }
    }

    /// Whether `op` on the `kind` named `name` is allowed.
    pub(crate) fn allows(&self, kind: ResourceKind, name: &str, op: AclOperation) -> bool {
        self.kinds[kind as usize].ops(name).permits(op)
    }

    /// Whether `op` is allowed on at least one `kind` resource (Kafka lets an
    /// idempotent producer initialise with WRITE on any topic).
    pub(crate) fn allows_any(&self, kind: ResourceKind, op: AclOperation) -> bool {
        self.kinds[kind as usize].any_grant().permits(op)
    }
}

/// The grants of every principal from a catalog's bindings: per tenant,
/// `*` bindings are added to each of the tenant's principals.
pub(crate) fn index<'a>(
    principals: impl Iterator<Item = (&'a str, &'a str)>,
    acls: &std::collections::BTreeMap<String, std::collections::BTreeSet<AclBinding>>,
) -> HashMap<String, Grants> {
    let mut out = HashMap::new();
    for (name, tenant) in principals {
        let mut g = Grants::default();
        for b in acls.get(tenant).into_iter().flatten() {
            if b.principal == name || b.principal == ANY_PRINCIPAL {
                g.add(b);
            }
        }
        out.insert(name.to_owned(), g);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn binding(kind: ResourceKind, pattern: PatternType, name: &str, operation: AclOperation) -> AclBinding {
        AclBinding { principal: "p".into(), kind, pattern, name: name.into(), operation }
    }

    #[test]
    fn literal_prefix_wildcard_and_implied_describe() {
        use AclOperation as O;
        use PatternType as P;
        use ResourceKind as K;
        let mut g = Grants::default();
        assert!(!g.allows(K::Topic, "orders", O::Describe), "deny by default");
        g.add(&binding(K::Topic, P::Prefixed, "orders.", O::Produce));
        assert!(g.allows(K::Topic, "orders.eu", O::Produce));
        assert!(g.allows(K::Topic, "orders.eu", O::Describe), "produce implies describe");
        assert!(!g.allows(K::Topic, "orders.eu", O::Consume));
        assert!(!g.allows(K::Topic, "orders", O::Produce), "the prefix includes the dot");
        assert!(!g.allows(K::Queue, "orders.eu", O::Produce), "kinds are separate");
        assert!(!g.allows(K::Topic, "payments", O::Describe));
        g.add(&binding(K::Group, P::Literal, "billing", O::Consume));
        assert!(g.allows(K::Group, "billing", O::Consume));
        assert!(!g.allows(K::Group, "billing-2", O::Consume), "literal is exact");
        g.add(&binding(K::Queue, P::Literal, ANY_NAME, O::All));
        for op in [O::Produce, O::Consume, O::Admin, O::Describe, O::All] {
            assert!(g.allows(K::Queue, "anything", op));
        }
        assert!(!g.allows(K::Topic, "orders.eu", O::Admin), "admin is not implied by produce");
        assert!(g.allows_any(K::Topic, O::Produce));
        assert!(!g.allows_any(K::Topic, O::Consume));
    }

    /// The obvious reading of the rules, to check the index against.
    fn model(bindings: &[AclBinding], kind: ResourceKind, name: &str, op: AclOperation) -> bool {
        bindings.iter().filter(|b| b.kind == kind).any(|b| {
            let matches = match b.pattern {
                PatternType::Literal => b.name == ANY_NAME || b.name == name,
                PatternType::Prefixed => name.starts_with(&b.name),
            };
            // Every operation implies describe; `all` implies everything.
            let grants = b.operation == op || b.operation == AclOperation::All || op == AclOperation::Describe;
            matches && grants
        })
    }

    fn kind() -> impl Strategy<Value = ResourceKind> {
        prop_oneof![Just(ResourceKind::Topic), Just(ResourceKind::Queue), Just(ResourceKind::Group)]
    }

    fn op() -> impl Strategy<Value = AclOperation> {
        prop_oneof![
            Just(AclOperation::All),
            Just(AclOperation::Produce),
            Just(AclOperation::Consume),
            Just(AclOperation::Admin),
            Just(AclOperation::Describe),
        ]
    }

    fn name() -> impl Strategy<Value = String> {
        // A small alphabet so prefixes and literals collide often.
        prop_oneof!["[ab.]{0,4}", Just(ANY_NAME.to_owned())]
    }

    fn bindings() -> impl Strategy<Value = Vec<AclBinding>> {
        proptest::collection::vec(
            (kind(), prop_oneof![Just(PatternType::Literal), Just(PatternType::Prefixed)], name(), op())
                .prop_map(|(k, p, n, o)| binding(k, p, &n, o)),
            0..8,
        )
    }

    proptest! {
        /// The precomputed matcher answers exactly as the linear model,
        /// for any set of bindings and any request.
        #[test]
        fn matcher_agrees_with_the_model(bs in bindings(), k in kind(), n in "[ab.*]{0,5}", o in op()) {
            let mut g = Grants::default();
            for b in &bs {
                g.add(b);
            }
            prop_assert_eq!(g.allows(k, &n, o), model(&bs, k, &n, o));
            let any = bs.iter().filter(|b| b.kind == k).any(|b| {
                b.operation == o || b.operation == AclOperation::All || o == AclOperation::Describe
            });
            prop_assert_eq!(g.allows_any(k, o), any);
        }

        /// Adding a binding never takes a permission away (grants only).
        #[test]
        fn grants_are_monotonic(bs in bindings(), extra in bindings(), k in kind(), n in "[ab.]{0,5}", o in op()) {
            let mut g = Grants::default();
            for b in &bs {
                g.add(b);
            }
            let before = g.allows(k, &n, o);
            for b in &extra {
                g.add(b);
            }
            prop_assert!(!before || g.allows(k, &n, o));
        }
    }
}

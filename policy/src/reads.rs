//! Which facts the loaded rules can observe, worked out once at load from the parsed policies.
//! The memo keys decisions on exactly these, so lookups by different callers about different
//! citizens share a decision whenever no rule could tell them apart.
//!
//! The analysis over-approximates: a fact is left out only when no rule can read it. A scope
//! constraint on `principal` or `resource`, a bare use of a variable (`principal == ...`,
//! `principal in ...`, `context has ...` is fine but `context == ...` is not), an attribute
//! this module does not know, or a policy that cannot be shown as JSON all count as reading
//! every fact behind that variable (or every fact, when nothing can be said).

use cedar_policy::{PolicySet, PrincipalConstraint, ResourceConstraint};
use serde_json::Value;

/// One flag per fact of [`crate::CaseFacts`] (or per context fact derived from them) that some
/// rule may read. Basis ids are never shown to Cedar, so they have no flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Reads {
    /// `principal` itself (its identity), i.e. the caller id.
    pub(crate) caller_id: bool,
    pub(crate) caller_department: bool,
    pub(crate) roles: bool,
    pub(crate) municipality: bool,
    pub(crate) source: bool,
    pub(crate) owner: bool,
    pub(crate) case_type: bool,
    pub(crate) legal_paragraph: bool,
    pub(crate) flags: bool,
    pub(crate) purpose: bool,
    pub(crate) own_department: bool,
    pub(crate) relation: bool,
    pub(crate) break_glass: bool,
    pub(crate) statute: bool,
    pub(crate) consent: bool,
    pub(crate) grant: bool,
    pub(crate) refusal: bool,
}

/// The request variables a rule can name.
#[derive(Debug, Clone, Copy)]
enum Var {
    Principal,
    Resource,
    Context,
}

impl Var {
    fn parse(name: &str) -> Option<Var> {
        match name {
            "principal" => Some(Var::Principal),
            "resource" => Some(Var::Resource),
            "context" => Some(Var::Context),
            _ => None,
        }
    }
}

impl Reads {
    /// Every fact: what a policy the analysis cannot see into may read.
    pub(crate) const ALL: Reads = Reads {
        caller_id: true,
        caller_department: true,
        roles: true,
        municipality: true,
        source: true,
        owner: true,
        case_type: true,
        legal_paragraph: true,
        flags: true,
        purpose: true,
        own_department: true,
        relation: true,
        break_glass: true,
        statute: true,
        consent: true,
        grant: true,
        refusal: true,
    };

    /// These and the facts checked against the catalog (source, case type, purpose, flags).
    pub(crate) fn and_vocabulary(self) -> Reads {
        Reads {
            source: true,
            case_type: true,
            purpose: true,
            flags: true,
            ..self
        }
    }

    /// The facts any rule of `policies` can read.
    pub(crate) fn of(policies: &PolicySet) -> Reads {
        let mut reads = Reads::default();
        for policy in policies.policies() {
            if policy.principal_constraint() != PrincipalConstraint::Any {
                reads.whole(Var::Principal);
            }
            if policy.resource_constraint() != ResourceConstraint::Any {
                reads.whole(Var::Resource);
            }
            // The action is always part of the key (every tier is asked), so its constraint
            // needs no analysis.
            let conditions = policy
                .to_json()
                .ok()
                .and_then(|mut json| json.get_mut("conditions").map(Value::take));
            match conditions {
                Some(conditions @ Value::Array(_)) => reads.walk(&conditions),
                _ => return Reads::ALL,
            }
        }
        reads
    }

    /// Records what an expression of Cedar's JSON form (the EST) reads. Only two shapes are
    /// read narrowly: `{".": {"left": {"Var": v}, "attr": a}}` and the same under `"has"`.
    /// Any other appearance of `{"Var": v}` reads all of `v`. Everything else (including
    /// literals, whose contents can only add reads) is walked into.
    fn walk(&mut self, json: &Value) {
        match json {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("Var", Value::String(name)) => match (Var::parse(name), name.as_str()) {
                            (Some(var), _) => self.whole(var),
                            // Part of the key already.
                            (None, "action") => {}
                            (None, _) => *self = Reads::ALL,
                        },
                        ("." | "has", Value::Object(access)) => {
                            let var = access
                                .get("left")
                                .and_then(Value::as_object)
                                .filter(|left| left.len() == 1)
                                .and_then(|left| left.get("Var"))
                                .and_then(Value::as_str)
                                .and_then(Var::parse);
                            let attr = access.get("attr").and_then(Value::as_str);
                            match (var, attr, access.len()) {
                                (Some(var), Some(attr), 2) => self.attribute(var, attr),
                                _ => self.walk(value),
                            }
                        }
                        // A template slot stands for an entity this analysis cannot see.
                        ("Slot", _) => *self = Reads::ALL,
                        _ => self.walk(value),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| self.walk(item)),
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
        }
    }

    fn attribute(&mut self, var: Var, attr: &str) {
        let flag = match (var, attr) {
            (Var::Principal, "department") => &mut self.caller_department,
            (Var::Principal, "roles") => &mut self.roles,
            (Var::Principal, "municipality") => &mut self.municipality,
            (Var::Resource, "source") => &mut self.source,
            (Var::Resource, "owner") => &mut self.owner,
            (Var::Resource, "case_type") => &mut self.case_type,
            (Var::Resource, "legal_paragraph") => &mut self.legal_paragraph,
            (Var::Resource, "flags") => &mut self.flags,
            (Var::Context, "purpose") => &mut self.purpose,
            (Var::Context, "own_department") => &mut self.own_department,
            (Var::Context, "relation") => &mut self.relation,
            (Var::Context, "break_glass") => &mut self.break_glass,
            (Var::Context, "statute") => &mut self.statute,
            (Var::Context, "consent") => &mut self.consent,
            (Var::Context, "grant") => &mut self.grant,
            (Var::Context, "refusal") => &mut self.refusal,
            _ => return self.whole(var),
        };
        *flag = true;
    }

    fn whole(&mut self, var: Var) {
        match var {
            Var::Principal => {
                self.caller_id = true;
                self.caller_department = true;
                self.roles = true;
                self.municipality = true;
            }
            Var::Resource => {
                self.source = true;
                self.owner = true;
                self.case_type = true;
                self.legal_paragraph = true;
                self.flags = true;
            }
            Var::Context => {
                self.purpose = true;
                self.own_department = true;
                self.relation = true;
                self.break_glass = true;
                self.statute = true;
                self.consent = true;
                self.grant = true;
                self.refusal = true;
            }
        }
    }
}

/// Facts by name, for tests that make a memo forget one (feature `testing`).
#[cfg(feature = "testing")]
impl Reads {
    /// Every fact's name (its field's) and flag, in declaration order.
    fn named(&mut self) -> [(&'static str, &mut bool); 17] {
        [
            ("caller_id", &mut self.caller_id),
            ("caller_department", &mut self.caller_department),
            ("roles", &mut self.roles),
            ("municipality", &mut self.municipality),
            ("source", &mut self.source),
            ("owner", &mut self.owner),
            ("case_type", &mut self.case_type),
            ("legal_paragraph", &mut self.legal_paragraph),
            ("flags", &mut self.flags),
            ("purpose", &mut self.purpose),
            ("own_department", &mut self.own_department),
            ("relation", &mut self.relation),
            ("break_glass", &mut self.break_glass),
            ("statute", &mut self.statute),
            ("consent", &mut self.consent),
            ("grant", &mut self.grant),
            ("refusal", &mut self.refusal),
        ]
    }

    /// The names of the facts read.
    pub(crate) fn names(mut self) -> Vec<&'static str> {
        self.named()
            .into_iter()
            .filter(|(_, read)| **read)
            .map(|(name, _)| name)
            .collect()
    }

    /// These without the fact `name`; `None` when it is not among them.
    pub(crate) fn without(mut self, name: &str) -> Option<Reads> {
        let (_, read) = self
            .named()
            .into_iter()
            .find(|(fact, read)| *fact == name && **read)?;
        *read = false;
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::str::FromStr;

    use super::*;

    fn reads(text: &str) -> Reads {
        Reads::of(&PolicySet::from_str(text).unwrap())
    }

    const PERMIT_ALL: &str = "permit (principal, action, resource);";

    #[test]
    fn the_default_policy_reads_no_caller_and_only_case_type_and_flags_of_the_case() {
        let r = reads(include_str!("../default/disclosure.cedar"));
        assert_eq!(
            r,
            Reads {
                case_type: true,
                flags: true,
                own_department: true,
                relation: true,
                break_glass: true,
                statute: true,
                consent: true,
                grant: true,
                refusal: true,
                ..Reads::default()
            }
        );
    }

    #[test]
    fn an_unconditional_permit_reads_nothing() {
        assert_eq!(reads(PERMIT_ALL), Reads::default());
    }

    #[test]
    fn an_attribute_reads_that_fact_only() {
        let r =
            reads("permit (principal, action, resource) when { principal.department == \"x\" };");
        assert_eq!(
            r,
            Reads {
                caller_department: true,
                ..Reads::default()
            }
        );
        let r =
            reads("permit (principal, action, resource) when { resource has legal_paragraph };");
        assert_eq!(
            r,
            Reads {
                legal_paragraph: true,
                ..Reads::default()
            }
        );
    }

    #[test]
    fn a_scope_constraint_reads_the_whole_variable() {
        let r = reads("permit (principal == Caller::\"cw-1\", action, resource);");
        assert!(r.caller_id && r.caller_department && r.roles && r.municipality);
        assert!(!r.source && !r.relation);
        let r = reads("permit (principal, action, resource is Case);");
        assert!(r.source && r.owner && r.case_type && r.legal_paragraph && r.flags);
        assert!(!r.caller_id);
    }

    #[test]
    fn a_bare_or_indirect_variable_reads_all_of_it() {
        let r = reads("permit (principal, action, resource) when { principal == Caller::\"a\" };");
        assert!(r.caller_id && r.caller_department);
        let r = reads(
            "permit (principal, action, resource) when { (if context.relation then principal else principal).department == \"x\" };",
        );
        assert!(r.caller_id && r.relation && !r.consent);
        let r = reads("permit (principal, action, resource) when { context == {} };");
        assert!(r.purpose && r.own_department && r.refusal && !r.caller_id);
        // A record literal whose key looks like an attribute access still reads `principal`.
        let r = reads(
            "permit (principal, action, resource) when { {\"left\": principal, \"attr\": 1} has attr };",
        );
        assert!(r.caller_id);
    }
}

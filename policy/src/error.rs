//! The one error type of this crate: why a policy was refused.

/// Why a policy (or the catalog its schema is built from) was refused at load time. Every message
/// names the rule (by `@id`, or by position when it has none) and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The catalog cannot make a schema (an empty list, a duplicate, a character a name may not
    /// hold).
    #[error("catalog {list}: {problem}")]
    Catalog { list: &'static str, problem: String },
    /// The schema built from the catalog did not parse (a bug in the template or the catalog).
    #[error("schema: {0}")]
    Schema(String),
    /// The policy text is not valid Cedar.
    #[error("syntax error{}: {message}", rule_suffix(rule.as_deref(), *line, *column))]
    Syntax {
        /// The `@id` of the rule the error is in, when one precedes it.
        rule: Option<String>,
        line: usize,
        column: usize,
        message: String,
    },
    /// A rule lacks an annotation it must carry.
    #[error("{rule}: missing @{annotation} annotation ({why})")]
    MissingAnnotation {
        rule: String,
        annotation: &'static str,
        why: &'static str,
    },
    /// Two rules share an `@id`.
    #[error("rule `{0}`: duplicate @id")]
    DuplicateId(String),
    /// A permit names a basis the crate does not know.
    #[error(
        "rule `{rule}`: unknown @basis(\"{basis}\"); expected one of own-department, statute, consent, grant, break-the-glass"
    )]
    UnknownBasis { rule: String, basis: String },
    /// A template (a rule with `?principal` or `?resource` slots); the policy holds rules only.
    #[error("{0}: templates are not supported; write the rule without slots")]
    Template(String),
    /// Strict validation against the schema failed: an unknown attribute, source, case type,
    /// purpose, flag or action, or a type error. One entry per problem, each naming its rule.
    #[error("policy does not match the schema: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// [`crate::Policy::without_rule`] was asked to remove a rule the policy does not have.
    #[error("no rule with @id `{0}`")]
    UnknownRule(String),
}

fn rule_suffix(rule: Option<&str>, line: usize, column: usize) -> String {
    match rule {
        Some(rule) => format!(" in rule `{rule}` at line {line}, column {column}"),
        None => format!(" at line {line}, column {column}"),
    }
}

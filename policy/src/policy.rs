//! The loaded policy: Cedar rules validated against the catalog's schema, and the one place that
//! turns [`CaseFacts`] into a [`Decision`].

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Effect, Entities, Entity,
    EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet, Request, RestrictedExpression,
    Schema, ValidationMode, Validator,
};
use sha2::{Digest, Sha256};

use crate::decision::{
    BasisKind, Decision, LegalBasis, NEEDS_BASIS, RULE_UNKNOWN_VOCABULARY, Withheld,
};
use crate::error::PolicyError;
use crate::facts::{BasisFact, CaseFacts, Catalog, Tier};
use crate::memo::Memo;
use crate::reads::Reads;

const DEFAULT_POLICY: &str = include_str!("../default/disclosure.cedar");
const SCHEMA_TEMPLATE: &str = include_str!("../default/samblik.cedarschema");

/// The Cedar action asked for each tier, lowest first; Hidden has none.
const TIER_ACTIONS: [(Tier, &str); 3] = [
    (Tier::Existence, "see-existence"),
    (Tier::Selected, "see-selected"),
    (Tier::Full, "see-full"),
];
const ADDRESS_ACTION: &str = "see-address";
/// The tier whose basis facts the address question is asked with: addresses are tier-2 fields.
const ADDRESS_TIER: Tier = Tier::Selected;

/// A loaded, validated disclosure policy. Cheap to share (`Send + Sync`); decisions are memoized
/// inside, keyed on the facts the rules can read.
pub struct Policy {
    /// One per entry of [`TIER_ACTIONS`].
    tier_questions: [Question; 3],
    address_question: Question,
    rules: Vec<Rule>,
    vocabulary: Vocabulary,
    version: String,
    authorizer: Authorizer,
    names: Names,
    contexts: Contexts,
    memo: Memo<Outcome>,
    /// Ceilings, keyed like decisions but on a [`CaseTypes`]' whole list: one memo hit per
    /// source instead of one per case type.
    ceilings: Memo<Tier>,
}

/// Joins a ceiling's case types into one memo key; a case type containing it is never memoised.
const CASE_TYPE_SEPARATOR: char = '\u{1f}';

/// The case types a source serves, with the memo key of their [`Policy::ceiling`]: built once
/// (at load), so a lookup's ceilings allocate nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseTypes {
    list: Vec<String>,
    /// The list joined by [`CASE_TYPE_SEPARATOR`]; `None` when it is empty or a case type
    /// contains the separator (two lists could then share a key).
    key: Option<String>,
}

impl CaseTypes {
    pub fn new<S: Into<String>>(case_types: impl IntoIterator<Item = S>) -> Self {
        let list: Vec<String> = case_types.into_iter().map(Into::into).collect();
        let key = (!list.is_empty() && !list.iter().any(|t| t.contains(CASE_TYPE_SEPARATOR)))
            .then(|| list.join(CASE_TYPE_SEPARATOR.encode_utf8(&mut [0; 4])));
        CaseTypes { list, key }
    }

    pub fn as_slice(&self) -> &[String] {
        &self.list
    }
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("version", &self.version)
            .field("rules", &self.rule_ids())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Rule {
    id: String,
    effect: RuleEffect,
}

#[derive(Debug)]
enum RuleEffect {
    Permit(BasisKind),
    Forbid { code: String, reason: String },
}

/// One action Cedar is asked, with only the rules whose action scope can match it: a rule that
/// cannot apply is never satisfied and never errors, so leaving it out changes no answer and
/// saves evaluating it.
#[derive(Debug)]
struct Question {
    action: EntityUid,
    policies: PolicySet,
}

impl Question {
    fn new(action: EntityUid, all: &PolicySet) -> Result<Question, PolicyError> {
        let mut policies = PolicySet::new();
        for policy in all.policies() {
            // The request's entities hold no actions, so `action in [..]` is membership.
            let applies = match policy.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(only) => only == action,
                ActionConstraint::In(list) => list.contains(&action),
            };
            if applies {
                policies
                    .add(policy.clone())
                    .map_err(|e| PolicyError::Schema(format!("policy set for {action}: {e}")))?;
            }
        }
        Ok(Question { action, policies })
    }
}

/// The catalog as sets, to refuse facts outside it before Cedar sees them.
#[derive(Debug)]
struct Vocabulary {
    sources: HashSet<String>,
    case_types: HashSet<String>,
    purposes: HashSet<String>,
    flags: HashSet<String>,
}

impl Vocabulary {
    fn new(catalog: &Catalog) -> Vocabulary {
        let set = |list: &[String]| list.iter().cloned().collect();
        let with_unknown = |list: &[String]| {
            list.iter()
                .cloned()
                .chain([Catalog::UNKNOWN.to_owned()])
                .collect()
        };
        Vocabulary {
            sources: set(&catalog.sources),
            case_types: with_unknown(&catalog.case_types),
            purposes: set(&catalog.purposes),
            flags: with_unknown(&catalog.flags),
        }
    }

    fn knows(&self, f: &CaseFacts<'_>) -> bool {
        self.sources.contains(f.source_id)
            && self.case_types.contains(f.case_type)
            && self.purposes.contains(f.purpose)
            && f.flags.iter().all(|flag| self.flags.contains(flag))
    }
}

/// Cedar names built once.
#[derive(Debug)]
struct Names {
    caller: EntityTypeName,
    case: EntityTypeName,
    source: EntityTypeName,
    case_type: EntityTypeName,
    purpose: EntityTypeName,
    flag: EntityTypeName,
    role: EntityTypeName,
}

impl Names {
    fn new() -> Result<Names, PolicyError> {
        let ty = |name: &str| {
            EntityTypeName::from_str(name)
                .map_err(|e| PolicyError::Schema(format!("entity type {name}: {e}")))
        };
        Ok(Names {
            caller: ty("Caller")?,
            case: ty("Case")?,
            source: ty("Source")?,
            case_type: ty("CaseType")?,
            purpose: ty("Purpose")?,
            flag: ty("Flag")?,
            role: ty("Role")?,
        })
    }

    fn action(name: &str) -> Result<EntityUid, PolicyError> {
        let ty = EntityTypeName::from_str("Action")
            .map_err(|e| PolicyError::Schema(format!("entity type Action: {e}")))?;
        Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(name)))
    }

    fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
    }

    fn entity(ty: &EntityTypeName, id: &str) -> RestrictedExpression {
        RestrictedExpression::new_entity_uid(Names::uid(ty, id))
    }
}

/// The context's booleans, in the order [`Contexts::get`] takes them.
const CONTEXT_FACTS: [&str; 7] = [
    "own_department",
    "relation",
    "break_glass",
    "statute",
    "consent",
    "grant",
    "refusal",
];

/// Every context a request can carry, built once at load: one per purpose and combination of
/// the boolean facts (a few hundred). Cedar contexts share their contents, so handing one to a
/// request is a reference-count increment instead of building a record per question.
#[derive(Debug)]
struct Contexts {
    by_purpose: HashMap<String, Vec<Context>>,
}

impl Contexts {
    fn new(names: &Names, purposes: &[String]) -> Result<Contexts, PolicyError> {
        let mut by_purpose = HashMap::new();
        for purpose in purposes {
            let contexts = (0..1usize << CONTEXT_FACTS.len())
                .map(|bits| {
                    let facts = CONTEXT_FACTS.iter().enumerate().map(|(i, name)| {
                        (
                            (*name).to_owned(),
                            RestrictedExpression::new_bool(bits & (1 << i) != 0),
                        )
                    });
                    let purpose = ("purpose".to_owned(), Names::entity(&names.purpose, purpose));
                    Context::from_pairs(std::iter::once(purpose).chain(facts))
                        .map_err(|e| PolicyError::Schema(format!("context: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            by_purpose.insert(purpose.clone(), contexts);
        }
        Ok(Contexts { by_purpose })
    }

    /// The context for this purpose and these facts (in [`CONTEXT_FACTS`] order).
    fn get(&self, purpose: &str, facts: [bool; CONTEXT_FACTS.len()]) -> Option<&Context> {
        let bits = facts
            .iter()
            .enumerate()
            .fold(0, |bits, (i, &on)| bits | usize::from(on) << i);
        self.by_purpose.get(purpose)?.get(bits)
    }
}

/// What Cedar decided, before the basis ids of the facts are filled in. Memoized.
#[derive(Debug, Clone)]
struct Outcome {
    tier: Tier,
    basis: Option<BasisKind>,
    rule_ids: Arc<[String]>,
    address_visible: bool,
    withheld: Option<Arc<Withheld>>,
}

impl Outcome {
    fn hidden(rule_ids: Arc<[String]>) -> Outcome {
        Outcome {
            tier: Tier::Hidden,
            basis: None,
            rule_ids,
            address_visible: false,
            withheld: None,
        }
    }
}

/// Cedar's answer to one action, in terms of our rules.
#[derive(Debug, Default)]
struct Verdict {
    allowed: bool,
    /// Indices into `Policy::rules` of the permits that allowed it (empty when denied).
    permits: Vec<usize>,
    /// Indices of the forbids that denied it, in policy order.
    forbids: Vec<usize>,
}

impl Policy {
    /// The shipped default policy text.
    pub fn default_source() -> &'static str {
        DEFAULT_POLICY
    }

    /// The Cedar schema (human-readable syntax) for this catalog; case types and flags end with
    /// [`Catalog::UNKNOWN`].
    pub fn schema_source(catalog: &Catalog) -> String {
        let list = |items: &[String]| {
            items
                .iter()
                .map(|item| format!("\"{}\"", item.escape_default()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let with_unknown = |items: &[String]| format!("{}, \"{}\"", list(items), Catalog::UNKNOWN);
        SCHEMA_TEMPLATE
            .replace("{{sources}}", &list(&catalog.sources))
            .replace("{{case_types}}", &with_unknown(&catalog.case_types))
            .replace("{{purposes}}", &list(&catalog.purposes))
            .replace("{{flags}}", &with_unknown(&catalog.flags))
    }

    /// Parses the policy and validates it strictly against the catalog's schema. Refuses a rule
    /// that names an unknown attribute, source, case type, purpose, flag or action; a syntax
    /// error; a permit without `@id` and `@basis` (one of own-department, statute, consent,
    /// grant, break-the-glass); a forbid without `@id`, `@code` and `@reason`; a duplicate id.
    pub fn load(policy_source: &str, catalog: &Catalog) -> Result<Policy, PolicyError> {
        Policy::build(policy_source, catalog, None)
    }

    /// Loads `policy_source` with the rule `rule_id` removed: for the corpus test that every
    /// rule matters.
    pub fn without_rule(
        policy_source: &str,
        catalog: &Catalog,
        rule_id: &str,
    ) -> Result<Policy, PolicyError> {
        Policy::build(policy_source, catalog, Some(rule_id))
    }

    /// `sha256:<hex>` over the policy text and the schema text; recorded in every audit record.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The `@id` of every rule, in the order they appear in the policy.
    pub fn rule_ids(&self) -> Vec<String> {
        self.rules.iter().map(|r| r.id.clone()).collect()
    }

    /// The decision for one case.
    ///
    /// The tier is the highest whose action Cedar permits (default deny; a matching forbid wins).
    /// A permit whose condition errors counts as not satisfied; a forbid whose condition errors
    /// counts as satisfied, so an error never widens an answer. Facts naming a source, case type,
    /// purpose or flag outside the catalog hide the case ([`RULE_UNKNOWN_VOCABULARY`]).
    pub fn decide(&self, facts: &CaseFacts<'_>) -> Decision {
        let outcome = self.memo.get_or_insert_with(facts, || self.evaluate(facts));
        Policy::decision(&outcome, facts)
    }

    /// The highest tier any case of this source could be granted in this lookup: the best
    /// [`Policy::decide`] over the given case types, with no sensitivity flags and the facts'
    /// bases. The gateway asks the source for no more. No case types: [`Tier::Hidden`].
    pub fn ceiling(&self, facts: &CaseFacts<'_>, case_types: &CaseTypes) -> Tier {
        let best = || {
            case_types
                .list
                .iter()
                .map(|case_type| {
                    let unflagged = CaseFacts {
                        case_type,
                        flags: &[],
                        ..*facts
                    };
                    self.memo
                        .get_or_insert_with(&unflagged, || self.evaluate(&unflagged))
                        .tier
                })
                .max()
                .unwrap_or(Tier::Hidden)
        };
        // The case type is always part of a memo key (the vocabulary check reads it), so the
        // joined list tells every list apart.
        match &case_types.key {
            Some(key) => {
                let listed = CaseFacts {
                    case_type: key,
                    flags: &[],
                    ..*facts
                };
                *self.ceilings.get_or_insert_with(&listed, best)
            }
            None => best(),
        }
    }

    fn build(
        policy_source: &str,
        catalog: &Catalog,
        skip: Option<&str>,
    ) -> Result<Policy, PolicyError> {
        check_catalog(catalog)?;
        let schema_text = Policy::schema_source(catalog);
        let (schema, _warnings) = Schema::from_cedarschema_str(&schema_text)
            .map_err(|e| PolicyError::Schema(e.to_string()))?;

        let parsed =
            PolicySet::from_str(policy_source).map_err(|e| syntax_error(policy_source, &e))?;
        if let Some(template) = parsed.templates().next() {
            return Err(PolicyError::Template(describe_unnamed(
                template.id(),
                &template.to_string(),
            )));
        }
        // The parser names rules `policy0`, `policy1`, ... in source order.
        let mut statements: Vec<_> = parsed.policies().collect();
        statements.sort_by_key(|p| statement_number(p.id()).unwrap_or(usize::MAX));

        let mut rules = Vec::with_capacity(statements.len());
        let mut policies = PolicySet::new();
        let mut seen = HashSet::new();
        let mut skipped = false;
        for statement in statements {
            let rule = read_annotations(statement)?;
            if !seen.insert(rule.id.clone()) {
                return Err(PolicyError::DuplicateId(rule.id));
            }
            if skip == Some(rule.id.as_str()) {
                skipped = true;
                continue;
            }
            policies
                .add(statement.new_id(PolicyId::new(&rule.id)))
                .map_err(|_| PolicyError::DuplicateId(rule.id.clone()))?;
            rules.push(rule);
        }
        if let Some(id) = skip
            && !skipped
        {
            return Err(PolicyError::UnknownRule(id.to_owned()));
        }

        let validation = Validator::new(schema).validate(&policies, ValidationMode::Strict);
        if !validation.validation_passed() {
            // Cedar names the rule (`for policy `statute`, ...`); a problem repeated for each
            // action the rule applies to is reported once.
            let mut problems: Vec<String> = Vec::new();
            for error in validation.validation_errors() {
                let id: &str = error.policy_id().as_ref();
                let mut problem = error.to_string();
                if !problem.contains(id) {
                    problem = format!("rule `{id}`: {problem}");
                }
                if !problems.contains(&problem) {
                    problems.push(problem);
                }
            }
            return Err(PolicyError::Invalid(problems));
        }

        let names = Names::new()?;
        let tier_questions = [
            Question::new(Names::action(TIER_ACTIONS[0].1)?, &policies)?,
            Question::new(Names::action(TIER_ACTIONS[1].1)?, &policies)?,
            Question::new(Names::action(TIER_ACTIONS[2].1)?, &policies)?,
        ];
        let address_question = Question::new(Names::action(ADDRESS_ACTION)?, &policies)?;
        // The vocabulary check runs on a miss only, so what it reads is part of the key too.
        let reads = Reads::of(&policies).and_vocabulary();
        let mut hasher = Sha256::new();
        for part in [policy_source, &schema_text, skip.unwrap_or_default()] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        Ok(Policy {
            tier_questions,
            address_question,
            rules,
            vocabulary: Vocabulary::new(catalog),
            version: format!("sha256:{}", hex::encode(hasher.finalize())),
            authorizer: Authorizer::new(),
            contexts: Contexts::new(&names, &catalog.purposes)?,
            names,
            memo: Memo::new(reads),
            ceilings: Memo::new(reads),
        })
    }

    fn decision(outcome: &Outcome, facts: &CaseFacts<'_>) -> Decision {
        let id = |fact: Option<BasisFact<'_>>| fact.map(|f| f.id.to_owned()).unwrap_or_default();
        let basis = outcome.basis.map(|kind| match kind {
            BasisKind::OwnDepartment => LegalBasis::OwnDepartment,
            BasisKind::Statute => LegalBasis::Statute(id(facts.statute)),
            BasisKind::Consent => LegalBasis::Consent(id(facts.consent)),
            BasisKind::Grant => LegalBasis::Grant(id(facts.grant)),
            BasisKind::BreakTheGlass => LegalBasis::BreakTheGlass,
        });
        Decision {
            tier: outcome.tier,
            basis,
            rule_ids: Arc::clone(&outcome.rule_ids),
            address_visible: outcome.address_visible,
            withheld: outcome.withheld.clone(),
        }
    }

    /// Asks Cedar, from the top tier down, and explains the answer. Reads nothing of `facts`
    /// but what Cedar is shown and what the vocabulary check reads: the memo key holds exactly
    /// that.
    fn evaluate(&self, facts: &CaseFacts<'_>) -> Outcome {
        if !self.vocabulary.knows(facts) {
            return Outcome::hidden(Arc::from([RULE_UNKNOWN_VOCABULARY.to_owned()]));
        }
        let Some((principal, resource, entities)) = self.entities(facts) else {
            return Outcome::hidden(Arc::from([]));
        };
        let ask = |question: &Question, tier: Tier| {
            self.ask(facts, &principal, question, &resource, &entities, tier)
        };

        let mut decided_by: Vec<usize> = Vec::new();
        let mut granted = None;
        // The forbid that denied the tier directly above the granted one, if any.
        let mut next_forbid = None;
        for ((tier, _), question) in TIER_ACTIONS.iter().zip(&self.tier_questions).rev() {
            let verdict = ask(question, *tier);
            if verdict.allowed {
                decided_by.extend(verdict.permits);
                granted = Some(*tier);
                break;
            }
            next_forbid = verdict.forbids.first().copied();
            decided_by.extend(verdict.forbids);
        }
        let Some(tier) = granted else {
            return Outcome::hidden(self.ids(decided_by));
        };

        let basis = decided_by
            .iter()
            .filter_map(|&i| match self.rules[i].effect {
                RuleEffect::Permit(kind) => Some(kind),
                RuleEffect::Forbid { .. } => None,
            })
            .min();

        let address_visible = tier >= ADDRESS_TIER && {
            let verdict = ask(&self.address_question, ADDRESS_TIER);
            decided_by.extend(verdict.forbids);
            verdict.allowed
        };

        let withheld = tier.next().map(|above| {
            Arc::new(match next_forbid.map(|i| &self.rules[i].effect) {
                Some(RuleEffect::Forbid { code, reason }) => Withheld {
                    tier: above,
                    code: code.clone(),
                    reason: reason.clone(),
                },
                _ => Withheld {
                    tier: above,
                    code: NEEDS_BASIS.to_owned(),
                    reason: format!(
                        "tier {} needs the citizen's consent or an approved access request",
                        above.as_u8()
                    ),
                },
            })
        });

        Outcome {
            tier,
            basis,
            rule_ids: self.ids(decided_by),
            address_visible,
            withheld,
        }
    }

    fn ids(&self, rules: Vec<usize>) -> Arc<[String]> {
        let mut ids: Vec<String> = rules
            .into_iter()
            .map(|i| self.rules[i].id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids.into()
    }

    /// The caller and the case as Cedar entities.
    fn entities(&self, f: &CaseFacts<'_>) -> Option<(EntityUid, EntityUid, Entities)> {
        let n = &self.names;
        let principal = Names::uid(&n.caller, f.caller_id);
        let caller = Entity::new(
            principal.clone(),
            HashMap::from([
                (
                    "department".to_owned(),
                    RestrictedExpression::new_string(f.caller_department.to_owned()),
                ),
                (
                    "roles".to_owned(),
                    RestrictedExpression::new_set(
                        f.roles.iter().map(|r| Names::entity(&n.role, r.as_str())),
                    ),
                ),
                (
                    "municipality".to_owned(),
                    RestrictedExpression::new_string(f.municipality.to_owned()),
                ),
            ]),
            HashSet::new(),
        )
        .ok()?;
        // The case has no identity of its own in a decision: everything Cedar may use is in its
        // attributes.
        let resource = Names::uid(&n.case, "case");
        let case = Entity::new(
            resource.clone(),
            HashMap::from([
                ("source".to_owned(), Names::entity(&n.source, f.source_id)),
                (
                    "owner".to_owned(),
                    RestrictedExpression::new_string(f.owner_department.to_owned()),
                ),
                (
                    "case_type".to_owned(),
                    Names::entity(&n.case_type, f.case_type),
                ),
                (
                    "legal_paragraph".to_owned(),
                    RestrictedExpression::new_string(f.legal_paragraph.to_owned()),
                ),
                (
                    "flags".to_owned(),
                    RestrictedExpression::new_set(
                        f.flags.iter().map(|flag| Names::entity(&n.flag, flag)),
                    ),
                ),
            ]),
            HashSet::new(),
        )
        .ok()?;
        // The facts were checked against the catalog and the entities are built here to the
        // schema's shape, so Cedar's own (costly) entity validation is not repeated per call.
        let entities = Entities::from_entities([caller, case], None).ok()?;
        Some((principal, resource, entities))
    }

    /// Asks Cedar whether `action` is permitted, with the basis facts answered for `tier`.
    /// Anything that goes wrong before Cedar answers denies.
    fn ask(
        &self,
        f: &CaseFacts<'_>,
        principal: &EntityUid,
        question: &Question,
        resource: &EntityUid,
        entities: &Entities,
        tier: Tier,
    ) -> Verdict {
        let covers = |fact: Option<BasisFact<'_>>| fact.is_some_and(|b| b.max_tier >= tier);
        let Some(context) = self.contexts.get(
            f.purpose,
            [
                f.own_department(),
                f.relation,
                f.break_glass,
                covers(f.statute),
                covers(f.consent),
                covers(f.grant),
                f.refusal.is_some(),
            ],
        ) else {
            return Verdict::default();
        };
        let Ok(request) = Request::new(
            principal.clone(),
            question.action.clone(),
            resource.clone(),
            context.clone(),
            None,
        ) else {
            return Verdict::default();
        };
        let response = self
            .authorizer
            .is_authorized(&request, &question.policies, entities);

        let mut verdict = Verdict::default();
        let diagnostics = response.diagnostics();
        let errored = diagnostics.errors().map(|e| match e {
            cedar_policy::AuthorizationError::PolicyEvaluationError(e) => e.policy_id(),
        });
        for id in diagnostics.reason() {
            if let Some(i) = self.rule_index(id) {
                match self.rules[i].effect {
                    RuleEffect::Permit(_) => verdict.permits.push(i),
                    RuleEffect::Forbid { .. } => verdict.forbids.push(i),
                }
            }
        }
        // Cedar skips a rule whose condition errors. For a permit that is what we want; a
        // forbid that cannot be evaluated must still hold its tier back.
        for id in errored {
            if let Some(i) = self.rule_index(id)
                && matches!(self.rules[i].effect, RuleEffect::Forbid { .. })
            {
                verdict.forbids.push(i);
            }
        }
        verdict.forbids.sort_unstable();
        verdict.forbids.dedup();
        verdict.allowed = response.decision() == CedarDecision::Allow && verdict.forbids.is_empty();
        if !verdict.allowed {
            verdict.permits.clear();
        }
        verdict
    }

    fn rule_index(&self, id: &PolicyId) -> Option<usize> {
        let id: &str = id.as_ref();
        self.rules.iter().position(|r| r.id == id)
    }
}

/// What only tests use (feature `testing`, never in the production build): evaluation without
/// the memo, to check the memo against, and a memo that forgets a fact, to check that check.
#[cfg(feature = "testing")]
impl Policy {
    /// What [`Policy::decide`] must answer, evaluated afresh: no memo is read or written.
    pub fn decide_afresh(&self, facts: &CaseFacts<'_>) -> Decision {
        Policy::decision(&self.evaluate(facts), facts)
    }

    /// How many decisions and how many ceilings are memoised. A lookup that leaves its count
    /// unchanged was answered from the memo: a miss always adds an entry (or starts the memo
    /// over at one).
    pub fn memoised(&self) -> (usize, usize) {
        (self.memo.len(), self.ceilings.len())
    }

    /// The facts a memo key holds, by name (`break_glass`, `consent`, `source`, ...).
    pub fn memo_key(&self) -> Vec<&'static str> {
        self.memo.reads().names()
    }

    /// This policy with empty memos whose key leaves out the fact `name` (one of
    /// [`Policy::memo_key`]): a memo that is wrong on purpose. `None` for a fact not in the key.
    pub fn forgetting(self, name: &str) -> Option<Policy> {
        let reads = self.memo.reads().without(name)?;
        Some(Policy {
            memo: Memo::new(reads),
            ceilings: Memo::new(reads),
            ..self
        })
    }
}

/// Refuses a catalog that cannot make a schema: Cedar enums may not be empty, and a name must be
/// plain text so the schema reads as written.
fn check_catalog(catalog: &Catalog) -> Result<(), PolicyError> {
    let lists: [(&'static str, &[String]); 4] = [
        ("sources", &catalog.sources),
        ("case_types", &catalog.case_types),
        ("purposes", &catalog.purposes),
        ("flags", &catalog.flags),
    ];
    for (list, items) in lists {
        let problem = |problem: String| PolicyError::Catalog { list, problem };
        if items.is_empty() {
            return Err(problem("is empty; list at least one".to_owned()));
        }
        let mut seen = HashSet::new();
        for item in items {
            if item.is_empty()
                || item
                    .chars()
                    .any(|c| c.is_control() || c == '"' || c == '\\')
            {
                return Err(problem(format!(
                    "{item:?} is not a valid name (empty, or holds a quote, backslash or control character)"
                )));
            }
            if !seen.insert(item) {
                return Err(problem(format!("{item:?} is listed twice")));
            }
            if item == Catalog::UNKNOWN && matches!(list, "case_types" | "flags") {
                return Err(problem(format!(
                    "{item:?} is reserved for codes the catalog does not hold; choose another name"
                )));
            }
        }
    }
    Ok(())
}

/// The rule's `@id` and what its other annotations say it does.
fn read_annotations(p: &cedar_policy::Policy) -> Result<Rule, PolicyError> {
    let missing = |rule: String, annotation, why| PolicyError::MissingAnnotation {
        rule,
        annotation,
        why,
    };
    let Some(id) = p.annotation("id") else {
        return Err(missing(
            describe_unnamed(p.id(), &p.to_string()),
            "id",
            "every rule needs an id for the audit record",
        ));
    };
    let id = id.to_owned();
    let effect = match p.effect() {
        Effect::Permit => {
            let basis = p.annotation("basis").ok_or_else(|| {
                missing(
                    format!("rule `{id}`"),
                    "basis",
                    "a permit must name the legal basis it stands on",
                )
            })?;
            let kind = BasisKind::parse(basis).ok_or_else(|| PolicyError::UnknownBasis {
                rule: id.clone(),
                basis: basis.to_owned(),
            })?;
            RuleEffect::Permit(kind)
        }
        Effect::Forbid => {
            let why = "a forbid must say what it withholds and why";
            let code = p
                .annotation("code")
                .ok_or_else(|| missing(format!("rule `{id}`"), "code", why))?;
            let reason = p
                .annotation("reason")
                .ok_or_else(|| missing(format!("rule `{id}`"), "reason", why))?;
            RuleEffect::Forbid {
                code: code.to_owned(),
                reason: reason.to_owned(),
            }
        }
    };
    Ok(Rule { id, effect })
}

/// The parser's number for a statement (`policy3` → 3), counting from 0 in source order.
fn statement_number(id: &PolicyId) -> Option<usize> {
    let id: &str = id.as_ref();
    id.strip_prefix("policy")?.parse().ok()
}

/// Names a rule without an `@id` by its position and its first line.
fn describe_unnamed(id: &PolicyId, text: &str) -> String {
    let position = statement_number(id)
        .map(|n| format!("rule #{}", n + 1))
        .unwrap_or_else(|| "a rule".to_owned());
    let first_line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("//") && !l.starts_with('@'))
        .unwrap_or_default();
    format!("{position} (`{first_line}`)")
}

/// A syntax error with its line and column, and the `@id` of the rule it is in when one
/// precedes it in the same statement.
fn syntax_error(source: &str, errors: &cedar_policy::ParseErrors) -> PolicyError {
    use miette::Diagnostic;
    let offset = errors
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset())
        .unwrap_or(0)
        .min(source.len());
    let before = source.get(..offset).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    // The statement the error is in starts after the last `;` before it (a heuristic: a `;`
    // inside a string or comment may cut it short, in which case no rule is named).
    let statement = before.rsplit(';').next().unwrap_or_default();
    let rule = statement.rfind("@id(\"").and_then(|at| {
        let rest = statement.get(at + 5..)?;
        rest.find('"')
            .and_then(|end| rest.get(..end))
            .map(str::to_owned)
    });
    let message = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>();
    PolicyError::Syntax {
        rule,
        line,
        column,
        message: message.join("; "),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::facts::Role;

    fn catalog() -> Catalog {
        Catalog::standard(vec![
            "child-welfare".into(),
            "jobcenter".into(),
            "integration".into(),
            "adult-social".into(),
        ])
    }

    #[test]
    fn the_unknown_type_is_in_every_schema_and_reserved() {
        let schema = Policy::schema_source(&catalog());
        assert!(schema.contains(r#""IL-19", "unknown"]"#), "{schema}");
        assert!(
            schema.contains(r#""police-information", "unknown"]"#),
            "{schema}"
        );
        for list in ["case_types", "flags"] {
            let mut reserved = catalog();
            match list {
                "case_types" => reserved.case_types.push(Catalog::UNKNOWN.into()),
                _ => reserved.flags.push(Catalog::UNKNOWN.into()),
            }
            let err = err_text(Policy::load(Policy::default_source(), &reserved));
            assert!(err.contains(list) && err.contains("reserved"), "{err}");
        }
    }

    fn default_policy() -> Policy {
        Policy::load(Policy::default_source(), &catalog()).unwrap()
    }

    const ROLES: &[Role] = &[Role::Caseworker];

    /// A jobcenter caseworker with a relation looks up a child-welfare case; tier 1 by statute.
    fn facts() -> CaseFacts<'static> {
        CaseFacts {
            caller_id: "cw-17",
            caller_department: "jobcenter",
            roles: ROLES,
            municipality: "0101",
            purpose: "prepare-meeting",
            source_id: "child-welfare",
            owner_department: "child-welfare",
            case_type: "SL-140",
            legal_paragraph: "Serviceloven § 140",
            flags: &[],
            relation: true,
            break_glass: false,
            statute: Some(BasisFact {
                id: "existence-and-contact",
                max_tier: Tier::Existence,
            }),
            consent: None,
            refusal: None,
            grant: None,
        }
    }

    /// The default policy with `replace` swapped for `with`, loaded.
    fn load_edited(replace: &str, with: &str) -> Result<Policy, PolicyError> {
        let source = Policy::default_source();
        assert!(
            source.contains(replace),
            "{replace:?} not in the default policy"
        );
        Policy::load(&source.replacen(replace, with, 1), &catalog())
    }

    fn err_text(result: Result<Policy, PolicyError>) -> String {
        result
            .expect_err("the policy should be refused")
            .to_string()
    }

    #[test]
    fn default_policy_loads_and_lists_its_rules() {
        let ids = default_policy().rule_ids();
        assert_eq!(
            ids,
            [
                "own-department",
                "statute",
                "consent",
                "grant",
                "break-the-glass",
                "break-the-glass-cap",
                "citizen-refused",
                "honour-related-conflict",
                "unknown-type",
                "police-information-cap",
                "address-protection",
            ]
        );
    }

    #[test]
    fn typo_in_an_attribute_is_refused_naming_rule_and_attribute() {
        let err = err_text(load_edited(
            "resource.flags.contains(Flag::\"police-information\")",
            "resource.flag.contains(Flag::\"police-information\")",
        ));
        assert!(err.contains("police-information-cap"), "{err}");
        assert!(err.contains("flag"), "{err}");
    }

    #[test]
    fn typo_in_a_context_fact_is_refused() {
        let err = err_text(load_edited("context.consent", "context.consnet"));
        assert!(
            err.contains("policy `consent`") && err.contains("consnet"),
            "{err}"
        );
    }

    #[test]
    fn unknown_source_is_refused() {
        let err = err_text(load_edited(
            "when { context.relation && context.grant }",
            "when { context.relation && context.grant && resource.source == Source::\"child-welfar\" }",
        ));
        assert!(
            err.contains("policy `grant`") && err.contains("child-welfar"),
            "{err}"
        );
    }

    #[test]
    fn unknown_case_type_and_flag_are_refused() {
        let err = err_text(load_edited("CaseType::\"SL-12a\"", "CaseType::\"SL-12\""));
        assert!(
            err.contains("honour-related-conflict") && err.contains("SL-12"),
            "{err}"
        );
        let err = err_text(load_edited(
            "Flag::\"address-protection\"",
            "Flag::\"adress-protection\"",
        ));
        assert!(err.contains("adress-protection"), "{err}");
    }

    #[test]
    fn unknown_purpose_is_refused() {
        let err = err_text(load_edited(
            "when { context.relation && context.consent }",
            "when { context.relation && context.consent && context.purpose == Purpose::\"gossip\" }",
        ));
        assert!(
            err.contains("policy `consent`") && err.contains("gossip"),
            "{err}"
        );
    }

    #[test]
    fn unknown_action_is_refused() {
        let err = err_text(load_edited(
            "action == Action::\"see-existence\"",
            "action == Action::\"see-existance\"",
        ));
        assert!(
            err.contains("policy `break-the-glass`") && err.contains("see-existance"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_names_rule_and_line() {
        let result = load_edited(
            "when { context.relation && context.statute };",
            "when { context.relation && && context.statute };",
        );
        let err = result.expect_err("refused");
        let PolicyError::Syntax { rule, line, .. } = &err else {
            panic!("expected a syntax error, got {err}");
        };
        assert_eq!(rule.as_deref(), Some("statute"));
        let expected_line = Policy::default_source()
            .lines()
            .position(|l| l.contains("when { context.relation && context.statute }"))
            .unwrap()
            + 1;
        assert_eq!(*line, expected_line);
        assert!(err.to_string().contains("rule `statute`"), "{err}");
    }

    #[test]
    fn missing_annotations_are_refused() {
        let err = err_text(load_edited("@id(\"grant\")\n", ""));
        assert!(
            err.contains("missing @id") && err.contains("rule #4 (`permit"),
            "{err}"
        );
        let err = err_text(load_edited("@basis(\"grant\")\n", ""));
        assert!(
            err.contains("rule `grant`") && err.contains("missing @basis"),
            "{err}"
        );
        let err = err_text(load_edited("@code(\"refused-by-citizen\")\n", ""));
        assert!(
            err.contains("rule `citizen-refused`") && err.contains("@code"),
            "{err}"
        );
        let err = err_text(load_edited(
            "@reason(\"the citizen's address is protected\")\n",
            "",
        ));
        assert!(
            err.contains("rule `address-protection`") && err.contains("@reason"),
            "{err}"
        );
    }

    #[test]
    fn unknown_basis_and_duplicate_ids_are_refused() {
        let err = err_text(load_edited("@basis(\"grant\")", "@basis(\"goodwill\")"));
        assert!(
            err.contains("rule `grant`") && err.contains("goodwill"),
            "{err}"
        );
        let err = err_text(load_edited("@id(\"grant\")", "@id(\"consent\")"));
        assert_eq!(err, "rule `consent`: duplicate @id");
    }

    #[test]
    fn templates_are_refused() {
        let err = err_text(load_edited(
            "permit (principal, action, resource)\nwhen { context.relation && context.grant }",
            "permit (principal == ?principal, action, resource)\nwhen { context.relation && context.grant }",
        ));
        assert!(err.contains("templates are not supported"), "{err}");
    }

    #[test]
    fn bad_catalogs_are_refused() {
        let mut empty = catalog();
        empty.sources.clear();
        assert!(err_text(Policy::load(Policy::default_source(), &empty)).contains("sources"));
        let mut quoted = catalog();
        quoted.flags.push("a\"b".into());
        assert!(err_text(Policy::load(Policy::default_source(), &quoted)).contains("flags"));
        let mut twice = catalog();
        twice.purposes.push("follow-up".into());
        assert!(err_text(Policy::load(Policy::default_source(), &twice)).contains("twice"));
    }

    #[test]
    fn schema_lists_the_catalog() {
        let schema = Policy::schema_source(&catalog());
        assert!(
            schema.contains(
                "entity Source enum [\"child-welfare\", \"jobcenter\", \"integration\", \"adult-social\"];"
            )
        );
        assert!(!schema.contains("{{"));
    }

    #[test]
    fn version_follows_policy_and_schema_text() {
        let a = default_policy();
        let b = default_policy();
        assert_eq!(a.version(), b.version());
        assert!(a.version().starts_with("sha256:") && a.version().len() == 7 + 64);
        let edited = load_edited("// Samblik's default", "// Samblik's edited").unwrap();
        assert_ne!(a.version(), edited.version());
        let mut other = catalog();
        other.sources.push("housing".into());
        let wider = Policy::load(Policy::default_source(), &other).unwrap();
        assert_ne!(a.version(), wider.version());
        let without = Policy::without_rule(Policy::default_source(), &catalog(), "grant").unwrap();
        assert_ne!(a.version(), without.version());
    }

    #[test]
    fn without_rule_removes_exactly_that_rule() {
        let p = Policy::without_rule(Policy::default_source(), &catalog(), "consent").unwrap();
        assert!(!p.rule_ids().contains(&"consent".to_owned()));
        assert_eq!(p.rule_ids().len(), default_policy().rule_ids().len() - 1);
        let err = Policy::without_rule(Policy::default_source(), &catalog(), "nope").unwrap_err();
        assert_eq!(err, PolicyError::UnknownRule("nope".into()));
    }

    #[test]
    fn statute_at_tier_one_explains_what_tier_two_needs() {
        let d = default_policy().decide(&facts());
        assert_eq!(d.tier, Tier::Existence);
        assert_eq!(
            d.basis,
            Some(LegalBasis::Statute("existence-and-contact".into()))
        );
        assert_eq!(*d.rule_ids, ["statute"]);
        assert!(!d.address_visible);
        let w = d.withheld.unwrap();
        assert_eq!((w.tier, w.code.as_str()), (Tier::Selected, NEEDS_BASIS));
        assert_eq!(
            w.reason,
            "tier 2 needs the citizen's consent or an approved access request"
        );
    }

    #[test]
    fn unknown_vocabulary_hides_the_case() {
        let p = default_policy();
        for f in [
            CaseFacts {
                source_id: "housing",
                ..facts()
            },
            CaseFacts {
                case_type: "SL-999",
                ..facts()
            },
            CaseFacts {
                purpose: "curiosity",
                ..facts()
            },
            CaseFacts {
                flags: &[String::new()],
                ..facts()
            },
        ] {
            let d = p.decide(&f);
            assert_eq!(d.tier, Tier::Hidden);
            assert_eq!(*d.rule_ids, [RULE_UNKNOWN_VOCABULARY]);
        }
    }

    #[test]
    fn a_forbid_that_errors_still_forbids_and_a_permit_that_errors_permits_nothing() {
        // 9223372036854775807 + 1 overflows at evaluation time; the validator accepts it.
        let forbid = load_edited(
            "when { context.refusal }",
            "when { context.refusal || 9223372036854775807 + 1 > 0 }",
        )
        .unwrap();
        let d = forbid.decide(&facts());
        assert_eq!(d.tier, Tier::Hidden);
        assert_eq!(*d.rule_ids, ["citizen-refused"]);

        let permit = load_edited(
            "when { context.relation && context.statute }",
            "when { context.relation && context.statute && 9223372036854775807 + 1 > 0 }",
        )
        .unwrap();
        assert_eq!(permit.decide(&facts()).tier, Tier::Hidden);
    }

    #[test]
    fn decisions_are_memoized_and_basis_ids_come_from_each_call() {
        let p = default_policy();
        let first = p.decide(&facts());
        assert_eq!(p.memo.len(), 1);
        let other_statute = CaseFacts {
            statute: Some(BasisFact {
                id: "rehabilitation-plan",
                max_tier: Tier::Existence,
            }),
            ..facts()
        };
        let second = p.decide(&other_statute);
        assert_eq!(p.memo.len(), 1, "the basis id is not part of the key");
        assert_eq!(first.tier, second.tier);
        assert_eq!(
            second.basis,
            Some(LegalBasis::Statute("rehabilitation-plan".into()))
        );
        p.decide(&CaseFacts {
            relation: false,
            ..facts()
        });
        assert_eq!(p.memo.len(), 2);
    }

    #[test]
    fn callers_and_citizens_the_rules_cannot_tell_apart_share_a_decision() {
        let p = default_policy();
        let first = p.decide(&facts());
        assert_eq!(p.memo.len(), 1);
        // Another caller in another department and municipality, about another citizen's case
        // under another paragraph in another owner's source: the default policy reads none of
        // these (only whether the caller owns the case, which stays false).
        let roles = [Role::Auditor, Role::Caseworker];
        let other = CaseFacts {
            caller_id: "cw-9001",
            caller_department: "integration",
            roles: &roles,
            municipality: "0851",
            legal_paragraph: "Serviceloven § 140, stk. 2",
            owner_department: "child-welfare-north",
            statute: Some(BasisFact {
                id: "rehabilitation-plan",
                max_tier: Tier::Existence,
            }),
            ..facts()
        };
        let second = p.decide(&other);
        assert_eq!(p.memo.len(), 1, "no rule reads what differs");
        assert_eq!(
            (second.tier, &second.rule_ids),
            (first.tier, &first.rule_ids)
        );
        assert_eq!(second.withheld, first.withheld);
        assert_eq!(
            second.basis,
            Some(LegalBasis::Statute("rehabilitation-plan".into())),
            "the basis id is the current facts', not the cached decision's"
        );
        // A fact the policy does read (the caller now owns the case) gets its own entry.
        let owner = p.decide(&CaseFacts {
            caller_department: "child-welfare",
            ..facts()
        });
        assert_eq!(p.memo.len(), 2);
        assert_eq!(owner.tier, Tier::Full);
        assert_eq!(owner.basis, Some(LegalBasis::OwnDepartment));
    }

    #[test]
    fn a_policy_that_reads_the_callers_department_keeps_callers_apart() {
        let source = format!(
            "{}\n@id(\"integration-statute-selected\")\n@basis(\"statute\")\n\
             permit (principal, action == Action::\"see-selected\", resource)\n\
             when {{ context.relation && principal.department == \"integration\" }};\n",
            Policy::default_source()
        );
        let p = Policy::load(&source, &catalog()).unwrap();
        let jobcenter = p.decide(&facts());
        assert_eq!(p.memo.len(), 1);
        let integration = p.decide(&CaseFacts {
            caller_id: "cw-18",
            caller_department: "integration",
            ..facts()
        });
        assert_eq!(
            p.memo.len(),
            2,
            "the department is read, so it is part of the key"
        );
        assert_eq!(jobcenter.tier, Tier::Existence);
        assert_eq!(integration.tier, Tier::Selected);
        assert_eq!(*integration.rule_ids, ["integration-statute-selected"]);
        // The caller id and municipality are still not read: a colleague shares the entry.
        let colleague = p.decide(&CaseFacts {
            caller_id: "cw-19",
            caller_department: "integration",
            municipality: "0851",
            ..facts()
        });
        assert_eq!(p.memo.len(), 2);
        assert_eq!(colleague, integration);
    }

    #[test]
    fn a_policy_that_names_a_caller_keeps_every_caller_apart() {
        let source = format!(
            "{}\n@id(\"cw-18-full\")\n@basis(\"grant\")\n\
             permit (principal == Caller::\"cw-18\", action, resource);\n",
            Policy::default_source()
        );
        let p = Policy::load(&source, &catalog()).unwrap();
        let cw17 = p.decide(&facts());
        let cw18 = p.decide(&CaseFacts {
            caller_id: "cw-18",
            ..facts()
        });
        assert_eq!(p.memo.len(), 2);
        assert_eq!((cw17.tier, cw18.tier), (Tier::Existence, Tier::Full));
    }

    #[test]
    fn unknown_vocabulary_is_not_memoized_as_a_known_case() {
        // No rule of the default policy reads the source; an unknown one must still hide.
        let p = default_policy();
        assert_eq!(p.decide(&facts()).tier, Tier::Existence);
        let d = p.decide(&CaseFacts {
            source_id: "housing",
            ..facts()
        });
        assert_eq!(*d.rule_ids, [RULE_UNKNOWN_VOCABULARY]);
        assert_eq!(
            p.ceiling(
                &CaseFacts {
                    source_id: "housing",
                    ..facts()
                },
                &CaseTypes::new(["SL-140"])
            ),
            Tier::Hidden
        );
    }

    #[test]
    fn ceiling_without_case_types_is_hidden() {
        let none: [&str; 0] = [];
        assert_eq!(
            default_policy().ceiling(&facts(), &CaseTypes::new(none)),
            Tier::Hidden
        );
        assert_eq!(
            default_policy().ceiling(&facts(), &CaseTypes::new(["SL-140", "SL-12a"])),
            Tier::Existence
        );
    }

    #[test]
    fn a_ceiling_is_remembered_per_list_of_case_types() {
        let p = default_policy();
        let list = CaseTypes::new(["SL-140", "SL-12a"]);
        let both = p.ceiling(&facts(), &list);
        assert_eq!(both, Tier::Existence);
        assert_eq!(p.ceilings.len(), 1);
        assert_eq!(p.ceiling(&facts(), &list.clone()), both);
        assert_eq!(p.ceilings.len(), 1, "the same list is one entry");
        // A case type that is not in the catalog hides, even when its text is the joined list
        // of two known ones: it is decided on its own, never from the list's entry.
        let joined = format!("SL-140{CASE_TYPE_SEPARATOR}SL-12a");
        assert_eq!(p.ceiling(&facts(), &CaseTypes::new([joined])), Tier::Hidden);
        assert_eq!(
            p.ceiling(&facts(), &CaseTypes::new(["SL-140"])),
            Tier::Existence
        );
        assert_eq!(p.ceilings.len(), 2);
    }

    #[test]
    fn policy_is_shareable_across_threads() {
        fn is<T: Send + Sync>() {}
        is::<Policy>();
    }
}

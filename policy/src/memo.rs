//! A small bounded memo of decisions. A decision is a pure function of the facts and the
//! (immutable) policy, so remembering it is safe; the key holds every fact Cedar is shown, so
//! two lookups share an entry only when Cedar would see exactly the same request. Basis ids are
//! not shown to Cedar and are filled in per call, so they are not part of the key.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Arc, Mutex};

use crate::facts::{BasisFact, CaseFacts, Role, Tier};

/// Entries kept before the memo starts over. A lookup needs a few dozen; this holds many
/// concurrent lookups' worth while staying a few hundred kilobytes.
const CAPACITY: usize = 4096;

#[derive(Debug)]
pub(crate) struct Memo<V> {
    state: RandomState,
    entries: Mutex<Entries<V>>,
}

#[derive(Debug)]
struct Entries<V> {
    buckets: HashMap<u64, Vec<(Key, Arc<V>)>>,
    len: usize,
}

impl<V> Memo<V> {
    pub(crate) fn new() -> Self {
        Memo {
            state: RandomState::new(),
            entries: Mutex::new(Entries {
                buckets: HashMap::new(),
                len: 0,
            }),
        }
    }

    /// The remembered value for these facts, or `compute`'s (remembered for next time).
    /// `compute` runs outside the lock.
    pub(crate) fn get_or_insert_with(
        &self,
        facts: &CaseFacts<'_>,
        compute: impl FnOnce() -> V,
    ) -> Arc<V> {
        let hash = {
            let mut hasher = self.state.build_hasher();
            hash_facts(facts, &mut hasher);
            hasher.finish()
        };
        // A poisoned lock only means another thread panicked mid-insert; the map itself is
        // still a valid map, so keep using it.
        {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(bucket) = entries.buckets.get(&hash)
                && let Some((_, value)) = bucket.iter().find(|(k, _)| k.matches(facts))
            {
                return Arc::clone(value);
            }
        }
        let value = Arc::new(compute());
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len >= CAPACITY {
            entries.buckets.clear();
            entries.len = 0;
        }
        let bucket = entries.buckets.entry(hash).or_default();
        if !bucket.iter().any(|(k, _)| k.matches(facts)) {
            bucket.push((Key::of(facts), Arc::clone(&value)));
            entries.len += 1;
        }
        value
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len
    }
}

fn role_bits(roles: &[Role]) -> u8 {
    roles.iter().fold(0, |bits, role| bits | 1 << (*role as u8))
}

fn max_tier(fact: Option<BasisFact<'_>>) -> Option<Tier> {
    fact.map(|f| f.max_tier)
}

fn hash_facts(f: &CaseFacts<'_>, h: &mut impl Hasher) {
    f.caller_id.hash(h);
    f.caller_department.hash(h);
    role_bits(f.roles).hash(h);
    f.municipality.hash(h);
    f.purpose.hash(h);
    f.source_id.hash(h);
    f.owner_department.hash(h);
    f.case_type.hash(h);
    f.legal_paragraph.hash(h);
    f.flags.hash(h);
    f.relation.hash(h);
    f.break_glass.hash(h);
    max_tier(f.statute).hash(h);
    max_tier(f.consent).hash(h);
    f.refusal.is_some().hash(h);
    max_tier(f.grant).hash(h);
}

/// Every fact Cedar is shown, owned.
#[derive(Debug)]
struct Key {
    caller_id: String,
    caller_department: String,
    roles: u8,
    municipality: String,
    purpose: String,
    source_id: String,
    owner_department: String,
    case_type: String,
    legal_paragraph: String,
    flags: Vec<String>,
    relation: bool,
    break_glass: bool,
    statute: Option<Tier>,
    consent: Option<Tier>,
    refusal: bool,
    grant: Option<Tier>,
}

impl Key {
    fn of(f: &CaseFacts<'_>) -> Key {
        Key {
            caller_id: f.caller_id.to_owned(),
            caller_department: f.caller_department.to_owned(),
            roles: role_bits(f.roles),
            municipality: f.municipality.to_owned(),
            purpose: f.purpose.to_owned(),
            source_id: f.source_id.to_owned(),
            owner_department: f.owner_department.to_owned(),
            case_type: f.case_type.to_owned(),
            legal_paragraph: f.legal_paragraph.to_owned(),
            flags: f.flags.to_vec(),
            relation: f.relation,
            break_glass: f.break_glass,
            statute: max_tier(f.statute),
            consent: max_tier(f.consent),
            refusal: f.refusal.is_some(),
            grant: max_tier(f.grant),
        }
    }

    fn matches(&self, f: &CaseFacts<'_>) -> bool {
        self.caller_id == f.caller_id
            && self.caller_department == f.caller_department
            && self.roles == role_bits(f.roles)
            && self.municipality == f.municipality
            && self.purpose == f.purpose
            && self.source_id == f.source_id
            && self.owner_department == f.owner_department
            && self.case_type == f.case_type
            && self.legal_paragraph == f.legal_paragraph
            && self.flags == f.flags
            && self.relation == f.relation
            && self.break_glass == f.break_glass
            && self.statute == max_tier(f.statute)
            && self.consent == max_tier(f.consent)
            && self.refusal == f.refusal.is_some()
            && self.grant == max_tier(f.grant)
    }
}

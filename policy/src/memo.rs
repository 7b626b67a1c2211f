//! A small bounded memo of decisions. A decision is a pure function of the facts the rules can
//! read and the (immutable) policy, so remembering it is safe. The key holds exactly the facts
//! some rule can observe, plus those checked against the catalog ([`Reads`], worked out at
//! load): two lookups share an entry only when every rule would see the same values, whoever
//! the caller and whichever the citizen. Basis ids
//! are never shown to Cedar and are filled in per call, so they are never part of the key.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Arc, Mutex};

use crate::facts::{BasisFact, CaseFacts, Role, Tier};
use crate::reads::Reads;

/// Entries kept before the memo starts over. A lookup needs a few dozen; this holds many
/// concurrent lookups' worth while staying a few hundred kilobytes.
const CAPACITY: usize = 4096;

#[derive(Debug)]
pub(crate) struct Memo<V> {
    reads: Reads,
    state: RandomState,
    entries: Mutex<Entries<V>>,
}

#[derive(Debug)]
struct Entries<V> {
    buckets: HashMap<u64, Vec<(Key, Arc<V>)>>,
    len: usize,
}

impl<V> Memo<V> {
    /// A memo keyed on the facts in `reads`.
    pub(crate) fn new(reads: Reads) -> Self {
        Memo {
            reads,
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
        let view = View::of(&self.reads, facts);
        let hash = self.state.hash_one(view);
        // A poisoned lock only means another thread panicked mid-insert; the map itself is
        // still a valid map, so keep using it.
        {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(bucket) = entries.buckets.get(&hash)
                && let Some((_, value)) = bucket.iter().find(|(k, _)| k.view() == view)
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
        if !bucket.iter().any(|(k, _)| k.view() == view) {
            bucket.push((Key::of(&view), Arc::clone(&value)));
            entries.len += 1;
        }
        value
    }

    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len
    }

    #[cfg(feature = "testing")]
    pub(crate) fn reads(&self) -> Reads {
        self.reads
    }
}

fn role_bits(roles: &[Role]) -> u8 {
    roles.iter().fold(0, |bits, role| bits | 1 << (*role as u8))
}

fn max_tier(fact: Option<BasisFact<'_>>) -> Option<Tier> {
    fact.map(|f| f.max_tier)
}

/// The facts of one case that some rule can read, borrowed; `None` where no rule reads the
/// fact, so facts no rule can see never tell two cases apart. What hashes and compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct View<'a> {
    caller_id: Option<&'a str>,
    caller_department: Option<&'a str>,
    /// As a set (Cedar sees a set): order and repeats do not matter.
    roles: Option<u8>,
    municipality: Option<&'a str>,
    source_id: Option<&'a str>,
    owner_department: Option<&'a str>,
    case_type: Option<&'a str>,
    legal_paragraph: Option<&'a str>,
    /// As a list: two orders of the same flags get two entries (harmless, and rare).
    flags: Option<&'a [String]>,
    purpose: Option<&'a str>,
    own_department: Option<bool>,
    relation: Option<bool>,
    break_glass: Option<bool>,
    /// Cedar sees, per tier, whether the basis covers it: the basis's best tier decides that.
    statute: Option<Option<Tier>>,
    consent: Option<Option<Tier>>,
    grant: Option<Option<Tier>>,
    refusal: Option<bool>,
}

impl<'a> View<'a> {
    fn of(r: &Reads, f: &CaseFacts<'a>) -> View<'a> {
        View {
            caller_id: r.caller_id.then_some(f.caller_id),
            caller_department: r.caller_department.then_some(f.caller_department),
            roles: r.roles.then(|| role_bits(f.roles)),
            municipality: r.municipality.then_some(f.municipality),
            source_id: r.source.then_some(f.source_id),
            owner_department: r.owner.then_some(f.owner_department),
            case_type: r.case_type.then_some(f.case_type),
            legal_paragraph: r.legal_paragraph.then_some(f.legal_paragraph),
            flags: r.flags.then_some(f.flags),
            purpose: r.purpose.then_some(f.purpose),
            own_department: r.own_department.then(|| f.own_department()),
            relation: r.relation.then_some(f.relation),
            break_glass: r.break_glass.then_some(f.break_glass),
            statute: r.statute.then(|| max_tier(f.statute)),
            consent: r.consent.then(|| max_tier(f.consent)),
            grant: r.grant.then(|| max_tier(f.grant)),
            refusal: r.refusal.then(|| f.refusal.is_some()),
        }
    }
}

/// Hashes the small facts as one word and each read text once: hashing is most of the cost of a
/// memo hit, and SipHash pays per write. Equal views write the same words, as `Hash` requires.
impl Hash for View<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        // Each optional fact takes a presence bit and its value bits.
        let mut word = 0u64;
        let mut push = |bits: Option<u64>, width: u32| {
            word = word << (width + 1) | bits.map_or(0, |b| b << 1 | 1);
        };
        let bool_bits = |b: Option<bool>| b.map(u64::from);
        // `Tier` is 0–3 and `None` is 4: three bits.
        let tier_bits = |t: Option<Option<Tier>>| t.map(|t| t.map_or(4, |t| u64::from(t.as_u8())));
        push(self.roles.map(u64::from), 8);
        push(bool_bits(self.own_department), 1);
        push(bool_bits(self.relation), 1);
        push(bool_bits(self.break_glass), 1);
        push(tier_bits(self.statute), 3);
        push(tier_bits(self.consent), 3);
        push(tier_bits(self.grant), 3);
        push(bool_bits(self.refusal), 1);
        h.write_u64(word);
        let texts = [
            self.caller_id,
            self.caller_department,
            self.municipality,
            self.source_id,
            self.owner_department,
            self.case_type,
            self.legal_paragraph,
            self.purpose,
        ];
        // Which texts are read is fixed per memo, so unread ones need write nothing; a
        // collision only costs a comparison (equality is decided by `PartialEq`).
        for text in texts.into_iter().flatten() {
            h.write(text.as_bytes());
            h.write_u8(0xff);
        }
        if let Some(flags) = self.flags {
            for flag in flags {
                h.write(flag.as_bytes());
                h.write_u8(0xfe);
            }
        }
    }
}

/// A [`View`], owned.
#[derive(Debug)]
struct Key {
    caller_id: Option<String>,
    caller_department: Option<String>,
    roles: Option<u8>,
    municipality: Option<String>,
    source_id: Option<String>,
    owner_department: Option<String>,
    case_type: Option<String>,
    legal_paragraph: Option<String>,
    flags: Option<Vec<String>>,
    purpose: Option<String>,
    own_department: Option<bool>,
    relation: Option<bool>,
    break_glass: Option<bool>,
    statute: Option<Option<Tier>>,
    consent: Option<Option<Tier>>,
    grant: Option<Option<Tier>>,
    refusal: Option<bool>,
}

impl Key {
    fn of(v: &View<'_>) -> Key {
        let owned = |s: Option<&str>| s.map(str::to_owned);
        Key {
            caller_id: owned(v.caller_id),
            caller_department: owned(v.caller_department),
            roles: v.roles,
            municipality: owned(v.municipality),
            source_id: owned(v.source_id),
            owner_department: owned(v.owner_department),
            case_type: owned(v.case_type),
            legal_paragraph: owned(v.legal_paragraph),
            flags: v.flags.map(<[String]>::to_vec),
            purpose: owned(v.purpose),
            own_department: v.own_department,
            relation: v.relation,
            break_glass: v.break_glass,
            statute: v.statute,
            consent: v.consent,
            grant: v.grant,
            refusal: v.refusal,
        }
    }

    fn view(&self) -> View<'_> {
        View {
            caller_id: self.caller_id.as_deref(),
            caller_department: self.caller_department.as_deref(),
            roles: self.roles,
            municipality: self.municipality.as_deref(),
            source_id: self.source_id.as_deref(),
            owner_department: self.owner_department.as_deref(),
            case_type: self.case_type.as_deref(),
            legal_paragraph: self.legal_paragraph.as_deref(),
            flags: self.flags.as_deref(),
            purpose: self.purpose.as_deref(),
            own_department: self.own_department,
            relation: self.relation,
            break_glass: self.break_glass,
            statute: self.statute,
            consent: self.consent,
            grant: self.grant,
            refusal: self.refusal,
        }
    }
}

//! The auditors' review queue: break-the-glass lookups and simple anomaly flags, worked out
//! from the log itself when asked (nothing is flagged at write time, so a threshold changed in
//! config applies to the past too), and the auditors' review marks, which are audit records.
//!
//! - `break-glass`: every lookup made with break-the-glass.
//! - `outside-hours`: a lookup outside working hours (local time) or on a weekend.
//! - `many-lookups`: a caller's lookups in one clock hour above a threshold.
//! - `many-denied`: the distinct citizens a caller was refused for lack of relation (reason
//!   [`NO_RELATION`]: no open case in their department) in one local day, above a threshold —
//!   someone trying citizens they have no case for. Refusals for any other reason (a calling
//!   system not admitted, a purpose it may not use) do not count, nor does trying the same
//!   citizen again.
//! - `foreign-citizen`: a lookup in which a department's system answered with a case about
//!   someone other than the citizen asked about. The gateway dropped that source's whole answer
//!   (nothing of it was shown) and flagged the source in the record
//!   ([`crate::SourceEntry::flag`]): a wrong mapping or a broken adapter in a department's system
//!   is a security event, even when no one saw the other citizen's data.

use crate::record::AuditRecord;
pub use crate::record::FOREIGN_CITIZEN;
use crate::search::Activity;
use chrono::{
    DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike, Utc, Weekday,
};
use chrono_tz::Tz;
use std::collections::{BTreeMap, HashMap, HashSet};

pub const BREAK_GLASS: &str = "break-glass";
pub const OUTSIDE_HOURS: &str = "outside-hours";
pub const MANY_LOOKUPS: &str = "many-lookups";
pub const MANY_DENIED: &str = "many-denied";

/// The reason the gateway records on a refusal for lack of relation (the caller has no open
/// case for the citizen in their own department). The review queue counts refusals by it, never
/// by their message, which is for people and may be reworded.
pub const NO_RELATION: &str = "NO_RELATION";

/// Whether a refused record (its `reason` and `detail`) is a refusal for lack of relation.
pub fn is_no_relation(reason: Option<&str>, detail: Option<&str>) -> bool {
    match reason {
        Some(reason) => reason == NO_RELATION,
        None => detail.is_some_and(is_legacy_no_relation_detail),
    }
}

impl Activity {
    /// Whether the lookup was refused because the caller has no relation to the citizen (no
    /// open case in their department), rather than for any other reason.
    pub fn refused_for_lack_of_relation(&self) -> bool {
        self.outcome == crate::Outcome::Denied.as_str()
            && is_no_relation(self.reason.as_deref(), self.detail.as_deref())
    }
}

/// How a refusal for lack of relation's `detail` began in records written before refusals had
/// a reason. Frozen: stores hold years of those records, and the review queue must go on
/// counting them, whatever the gateway's message says today.
const LEGACY_NO_RELATION_DETAIL: &str =
    "permission denied: you have no open case for this citizen in your department";

/// Whether a refusal recorded without a reason was one for lack of relation, by its `detail`:
/// for records written before refusals had reasons only. A record with a reason is judged by
/// its reason ([`is_no_relation`]).
fn is_legacy_no_relation_detail(detail: &str) -> bool {
    detail.starts_with(LEGACY_NO_RELATION_DETAIL)
}

/// How a group item's key names its window's start (UTC), and that text's length.
const WINDOW_KEY_FORMAT: &str = "%Y-%m-%dT%H:%MZ";
const WINDOW_KEY_LEN: usize = "2026-01-01T00:00Z".len();

/// Most request ids one item lists on the wire. The item itself keeps them all: the `flagged`
/// search filter is built from them, and must not lose a lookup because a window held many.
pub const MAX_ITEM_REQUESTS: usize = 50;

/// The thresholds, from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewRules {
    /// The municipality's time zone, for working hours and days.
    pub timezone: Tz,
    pub work_start: NaiveTime,
    pub work_end: NaiveTime,
    /// The working days; a lookup on any other day is outside working hours.
    pub work_days: Vec<Weekday>,
    /// More lookups than this by one caller in one clock hour are flagged.
    pub max_lookups_per_hour: usize,
    /// More distinct citizens than this refused to one caller for lack of relation in one
    /// local day are flagged.
    pub max_denied_per_day: usize,
}

impl Default for ReviewRules {
    fn default() -> Self {
        ReviewRules {
            timezone: chrono_tz::Europe::Copenhagen,
            work_start: NaiveTime::from_hms_opt(7, 0, 0).unwrap_or_default(),
            work_end: NaiveTime::from_hms_opt(18, 0, 0).unwrap_or_default(),
            work_days: vec![
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
            ],
            max_lookups_per_hour: 30,
            max_denied_per_day: 5,
        }
    }
}

/// One thing for an auditor to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewItem {
    /// Stable across calls: `kind:request id` or `kind:caller:window`.
    pub key: String,
    pub kind: &'static str,
    pub caller_id: String,
    pub department: String,
    /// The first record concerned and the end of the window the item covers.
    pub at: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// The last record concerned: a mark older than it was made before the item grew.
    pub last: DateTime<Utc>,
    /// How many lookups the item concerns; for [`MANY_DENIED`], how many distinct citizens
    /// they were of (what its threshold counts).
    pub count: usize,
    /// Every lookup the item concerns (the wire lists the first [`MAX_ITEM_REQUESTS`]).
    pub request_ids: Vec<String>,
    pub summary: String,
    pub review: Option<ReviewMark>,
}

impl ReviewItem {
    /// Whether the item belongs to the period `from..until`: its lookup is in it, or its window
    /// overlaps it (a window is judged whole, whatever part of it the period holds).
    pub fn overlaps(&self, from: DateTime<Utc>, until: DateTime<Utc>) -> bool {
        if self.window_end > self.at {
            self.at < until && from < self.window_end
        } else {
            from <= self.at && self.at < until
        }
    }
}

/// An auditor's "reviewed" mark, as kept in the record of [`crate::Action::ReviewMarked`].
///
/// A mark covers its item as it was when marked: a window that has gained lookups since is
/// back in the queue, so a mark made at 10:05 on 31 lookups does not hide the 500 of 10:59.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewMark {
    pub key: String,
    pub by: String,
    pub at: DateTime<Utc>,
    pub note: String,
    /// The item's count when marked; `None` in marks made before marks kept it, which cover
    /// the item's records up to the mark's time.
    pub count: Option<usize>,
}

impl ReviewMark {
    /// The record's `change`, for a mark on `item`.
    pub fn change_json(item: &ReviewItem, note: &str, count: usize) -> serde_json::Value {
        serde_json::json!({ "type": "review", "key": item.key, "note": note, "count": count })
    }

    /// Whether this mark covers `item` as it is now (the mark is on its key).
    pub fn covers(&self, item: &ReviewItem) -> bool {
        match self.count {
            Some(count) => item.count <= count,
            None => item.last <= self.at,
        }
    }

    /// Reads a mark back from its record; `None` for any other record.
    pub fn from_record(record: &AuditRecord) -> Option<ReviewMark> {
        let change = record.change.as_ref()?;
        if change.get("type")?.as_str()? != "review" {
            return None;
        }
        Some(ReviewMark {
            key: change.get("key")?.as_str()?.to_owned(),
            by: record.actor.caller_id.clone(),
            at: parse(&record.at)?,
            note: change.get("note")?.as_str()?.to_owned(),
            count: change
                .get("count")
                .and_then(serde_json::Value::as_u64)
                .and_then(|c| usize::try_from(c).ok()),
        })
    }
}

fn parse(at: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl ReviewRules {
    /// Whether `at` falls outside working hours or days, in the municipality's time.
    pub fn outside_hours(&self, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&self.timezone);
        let time = local.time();
        !self.work_days.contains(&local.weekday())
            || time < self.work_start
            || time >= self.work_end
    }

    /// The local clock hour `at` falls in: its start and end in UTC.
    fn hour_of(&self, at: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let start = at
            .with_minute(0)
            .and_then(|t| t.with_second(0))
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or(at);
        // Denmark's offsets are whole hours, so a UTC hour is a local one.
        (start, start + chrono::Duration::hours(1))
    }

    /// The local day `at` falls in, and that day's start and end in UTC.
    fn day_of(&self, at: DateTime<Utc>) -> (NaiveDate, DateTime<Utc>, DateTime<Utc>) {
        let day = at.with_timezone(&self.timezone).date_naive();
        let start_of = |d: NaiveDate| {
            self.timezone
                .from_local_datetime(&d.and_time(NaiveTime::MIN))
                .earliest()
                .map_or(at, |t| t.with_timezone(&Utc))
        };
        let next = day.succ_opt().unwrap_or(day);
        (day, start_of(day), start_of(next))
    }

    /// The review items in `activity` (lookup records, oldest first) and `records` (the
    /// period's records made with break-the-glass or with a flagged source; one record may be
    /// both). A lookup is one request however many records it wrote (a streamed lookup writes
    /// one per department as it answers), so it is one item of a kind and counts once.
    pub fn analyse(&self, activity: &[Activity], records: &[AuditRecord]) -> Vec<ReviewItem> {
        let mut items = Vec::new();
        let activity = lookups(activity.iter());
        let mut seen = HashSet::new();
        for r in records {
            let Some(at) = parse(&r.at) else { continue };
            let single = |kind: &'static str, summary: String| ReviewItem {
                key: format!("{kind}:{}", r.request_id),
                kind,
                caller_id: r.actor.caller_id.clone(),
                department: r.actor.department.clone(),
                at,
                window_end: at,
                last: at,
                count: 1,
                request_ids: vec![r.request_id.clone()],
                summary,
                review: None,
            };
            if r.break_glass_reason.is_some() && seen.insert((BREAK_GLASS, r.request_id.as_str())) {
                items.push(single(
                    BREAK_GLASS,
                    format!("break-the-glass lookup ({})", r.outcome.as_str()),
                ));
            }
            let foreign: Vec<&str> = r
                .sources
                .iter()
                .filter(|s| s.flag.as_deref() == Some(FOREIGN_CITIZEN))
                .map(|s| s.source_id.as_str())
                .collect();
            if !foreign.is_empty() && seen.insert((FOREIGN_CITIZEN, r.request_id.as_str())) {
                items.push(single(
                    FOREIGN_CITIZEN,
                    format!(
                        "{} answered with a case about another citizen; the answer was dropped",
                        foreign.join(", ")
                    ),
                ));
            }
        }
        let mut hours: BTreeMap<(String, DateTime<Utc>), Vec<&Activity>> = BTreeMap::new();
        let mut days: BTreeMap<(String, NaiveDate), Vec<&Activity>> = BTreeMap::new();
        for a in &activity {
            let Some(at) = parse(&a.at) else { continue };
            if self.outside_hours(at) {
                let local = at.with_timezone(&self.timezone);
                items.push(ReviewItem {
                    key: format!("{OUTSIDE_HOURS}:{}", a.request_id),
                    kind: OUTSIDE_HOURS,
                    caller_id: a.caller_id.clone(),
                    department: a.department.clone(),
                    at,
                    window_end: at,
                    last: at,
                    count: 1,
                    request_ids: vec![a.request_id.clone()],
                    summary: format!(
                        "lookup at {} local time, outside working hours {}–{} on working days",
                        local.format("%a %H:%M"),
                        self.work_start.format("%H:%M"),
                        self.work_end.format("%H:%M")
                    ),
                    review: None,
                });
            }
            hours
                .entry((a.caller_id.clone(), self.hour_of(at).0))
                .or_default()
                .push(a);
            if a.refused_for_lack_of_relation() {
                days.entry((a.caller_id.clone(), self.day_of(at).0))
                    .or_default()
                    .push(a);
            }
        }
        for ((caller, start), lookups) in hours {
            if lookups.len() > self.max_lookups_per_hour {
                items.push(self.group_item(
                    MANY_LOOKUPS,
                    &caller,
                    start,
                    start + chrono::Duration::hours(1),
                    &lookups,
                    format!(
                        "{} lookups in one hour (threshold {})",
                        lookups.len(),
                        self.max_lookups_per_hour
                    ),
                ));
            }
        }
        for ((caller, day), denied) in days {
            let citizens = distinct_citizens(&denied);
            if citizens > self.max_denied_per_day {
                let (_, start, end) = self.day_of(
                    denied
                        .first()
                        .and_then(|a| parse(&a.at))
                        .unwrap_or_default(),
                );
                let mut item = self.group_item(
                    MANY_DENIED,
                    &caller,
                    start,
                    end,
                    &denied,
                    format!(
                        "{citizens} distinct citizens refused for lack of relation on {day} \
                         ({} refused lookups; threshold {} citizens)",
                        denied.len(),
                        self.max_denied_per_day
                    ),
                );
                // What the threshold counts, so a mark covers the citizens tried when marked.
                item.count = citizens;
                items.push(item);
            }
        }
        items.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.key.cmp(&b.key)));
        items
    }

    fn group_item(
        &self,
        kind: &'static str,
        caller: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        records: &[&Activity],
        summary: String,
    ) -> ReviewItem {
        ReviewItem {
            key: format!("{kind}:{caller}:{}", start.format(WINDOW_KEY_FORMAT)),
            kind,
            caller_id: caller.to_owned(),
            department: records
                .first()
                .map(|a| a.department.clone())
                .unwrap_or_default(),
            at: start,
            window_end: end,
            last: records.last().and_then(|a| parse(&a.at)).unwrap_or(start),
            count: records.len(),
            request_ids: records.iter().map(|a| a.request_id.clone()).collect(),
            summary,
            review: None,
        }
    }

    /// The window a group item's key names (`kind:caller:start`), from its start; `None` for
    /// the key of a single lookup's item or a key that names no window.
    pub fn window_of_key(&self, key: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let (kind, rest) = key.split_once(':')?;
        let start = rest.get(rest.len().checked_sub(WINDOW_KEY_LEN)?..)?;
        let start = NaiveDateTime::parse_from_str(start, WINDOW_KEY_FORMAT)
            .ok()?
            .and_utc();
        match kind {
            MANY_LOOKUPS => Some(self.hour_of(start)),
            MANY_DENIED => {
                let (_, from, until) = self.day_of(start);
                Some((from, until))
            }
            _ => None,
        }
    }

    /// The window of lookups [`ReviewRules::flags`] needs to see for records in `from..until`,
    /// and [`ReviewRules::analyse`] for the windows that overlap it: whole local days around it.
    pub fn context(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> (DateTime<Utc>, DateTime<Utc>) {
        (self.day_of(from).1, self.day_of(until).2)
    }

    /// The flags of one record, given the lookups of its caller around it (see
    /// [`ReviewRules::context`]).
    pub fn flags(&self, record: &AuditRecord, activity: &[Activity]) -> Vec<&'static str> {
        let mut flags = Vec::new();
        if record.break_glass_reason.is_some() {
            flags.push(BREAK_GLASS);
        }
        if record
            .sources
            .iter()
            .any(|s| s.flag.as_deref() == Some(FOREIGN_CITIZEN))
        {
            flags.push(FOREIGN_CITIZEN);
        }
        let is_lookup = matches!(
            record.action,
            crate::Action::Lookup | crate::Action::LookupStream
        );
        let Some(at) = parse(&record.at) else {
            return flags;
        };
        if !is_lookup {
            return flags;
        }
        if self.outside_hours(at) {
            flags.push(OUTSIDE_HOURS);
        }
        let (hour_start, hour_end) = self.hour_of(at);
        let (_, day_start, day_end) = self.day_of(at);
        let mine = lookups(
            activity
                .iter()
                .filter(|a| a.caller_id == record.actor.caller_id),
        );
        let mut in_hour = 0;
        let mut denied_in_day = Vec::new();
        for (t, a) in mine.iter().filter_map(|a| Some((parse(&a.at)?, a))) {
            if t >= hour_start && t < hour_end {
                in_hour += 1;
            }
            if t >= day_start && t < day_end && a.refused_for_lack_of_relation() {
                denied_in_day.push(a);
            }
        }
        if in_hour > self.max_lookups_per_hour {
            flags.push(MANY_LOOKUPS);
        }
        let no_relation = record.outcome == crate::Outcome::Denied
            && is_no_relation(record.reason.as_deref(), record.detail.as_deref());
        if no_relation && distinct_citizens(&denied_in_day) > self.max_denied_per_day {
            flags.push(MANY_DENIED);
        }
        flags
    }
}

/// How many distinct citizens `lookups` concern.
fn distinct_citizens(lookups: &[&Activity]) -> usize {
    lookups
        .iter()
        .filter_map(|a| a.cpr.as_ref())
        .collect::<HashSet<_>>()
        .len()
}

/// Lookup records as lookups: the records of one request id become one, at its first record's
/// time, refused (and why) if any of them was.
fn lookups<'a>(records: impl Iterator<Item = &'a Activity>) -> Vec<Activity> {
    let mut lookups: Vec<Activity> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for r in records {
        match index.get(r.request_id.as_str()) {
            Some(&i) => {
                if r.outcome == crate::Outcome::Denied.as_str() {
                    lookups[i].outcome.clone_from(&r.outcome);
                    lookups[i].reason.clone_from(&r.reason);
                    lookups[i].detail.clone_from(&r.detail);
                }
            }
            None => {
                index.insert(&r.request_id, lookups.len());
                lookups.push(r.clone());
            }
        }
    }
    lookups
}

/// Applies the latest mark of each key to `items`, where it still covers the item (see
/// [`ReviewMark::covers`]); without `include_reviewed`, drops the reviewed ones. An item that
/// grew since its mark is unreviewed again, and its summary says so.
pub fn apply_marks(items: &mut Vec<ReviewItem>, marks: &[ReviewMark], include_reviewed: bool) {
    let mut latest: BTreeMap<&str, &ReviewMark> = BTreeMap::new();
    for m in marks {
        match latest.get(m.key.as_str()) {
            Some(seen) if seen.at >= m.at => {}
            _ => {
                latest.insert(&m.key, m);
            }
        }
    }
    for item in items.iter_mut() {
        let Some(mark) = latest.get(item.key.as_str()) else {
            continue;
        };
        if mark.covers(item) {
            item.review = Some((*mark).clone());
        } else {
            let had = mark.count.map_or_else(String::new, |c| format!(" at {c}"));
            item.summary = format!(
                "{}; grown since reviewed{had} by {} on {}",
                item.summary,
                mark.by,
                mark.at.format("%Y-%m-%d %H:%M UTC")
            );
        }
    }
    if !include_reviewed {
        items.retain(|i| i.review.is_none());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        parse(text).unwrap()
    }

    /// A lookup of a citizen of its own (by `id`); a `denied` one refused for lack of relation.
    fn lookup(id: usize, at: &str, caller: &str, outcome: &str) -> Activity {
        let why = if outcome == "denied" {
            no_relation()
        } else {
            Why::default()
        };
        Activity {
            outcome: outcome.into(),
            ..refusal(id, at, caller, &format!("01019{id:05}"), why)
        }
    }

    /// Why a lookup was refused, as its record says.
    #[derive(Debug, Clone, Default)]
    struct Why {
        reason: Option<&'static str>,
        detail: Option<String>,
    }

    /// How the gateway records a refusal for lack of relation.
    fn no_relation() -> Why {
        Why {
            reason: Some(NO_RELATION),
            detail: Some(
                "permission denied: you have no open case for this citizen in your department; \
                 if you must look anyway, break the glass with a written reason"
                    .into(),
            ),
        }
    }

    /// How a refusal for lack of relation was recorded before refusals had reasons.
    fn legacy_no_relation() -> Why {
        Why {
            reason: None,
            ..no_relation()
        }
    }

    /// A refused lookup of `cpr`, refused for `why`.
    fn refusal(id: usize, at: &str, caller: &str, cpr: &str, why: Why) -> Activity {
        Activity {
            at: at.into(),
            request_id: format!("r-{id}"),
            caller_id: caller.into(),
            department: "jobcenter".into(),
            cpr: Some(samblik_cpr::Cpr::parse(cpr).unwrap()),
            outcome: "denied".into(),
            reason: why.reason.map(str::to_owned),
            detail: why.detail,
        }
    }

    fn record_at(at: &str, caller: &str) -> AuditRecord {
        let event = crate::AuditEvent {
            request_id: "r".into(),
            action: crate::Action::Lookup,
            actor: crate::Actor {
                caller_id: caller.into(),
                ..crate::Actor::default()
            },
            cpr: None,
            purpose: None,
            break_glass_reason: None,
            outcome: crate::Outcome::Answered,
            detail: None,
            reason: None,
            sources: Vec::new(),
            policy_version: String::new(),
        };
        AuditRecord::seal(event, "c", 1, at.into(), crate::GENESIS_HASH)
    }

    #[test]
    fn working_hours_are_local_weekdays() {
        let rules = ReviewRules::default();
        // Monday 2026-11-23: Copenhagen is UTC+1 in winter.
        assert!(!rules.outside_hours(at("2026-11-23T06:30:00Z"))); // 07:30 local
        assert!(rules.outside_hours(at("2026-11-23T05:30:00Z"))); // 06:30 local
        assert!(rules.outside_hours(at("2026-11-23T17:00:00Z"))); // 18:00 local
        assert!(rules.outside_hours(at("2026-11-22T10:00:00Z"))); // Sunday
        // Summer time: UTC+2.
        assert!(!rules.outside_hours(at("2026-06-15T05:30:00Z"))); // 07:30 local
    }

    #[test]
    fn many_lookups_in_an_hour_and_many_refusals_in_a_day_are_flagged_once_per_window() {
        let rules = ReviewRules {
            max_lookups_per_hour: 3,
            max_denied_per_day: 2,
            ..ReviewRules::default()
        };
        let mut activity = Vec::new();
        for i in 0..4 {
            activity.push(lookup(
                i,
                &format!("2026-11-23T09:0{i}:00.000000Z"),
                "cw-a",
                "answered",
            ));
        }
        for i in 4..7 {
            activity.push(lookup(
                i,
                &format!("2026-11-23T1{}:00:00.000000Z", i - 4),
                "cw-b",
                "denied",
            ));
        }
        // Three lookups for cw-c: at the threshold, not above it.
        for i in 7..10 {
            activity.push(lookup(
                i,
                &format!("2026-11-23T09:1{}:00.000000Z", i - 7),
                "cw-c",
                "answered",
            ));
        }
        let items = rules.analyse(&activity, &[]);
        let kinds: Vec<(&str, &str, usize)> = items
            .iter()
            .map(|i| (i.kind, i.caller_id.as_str(), i.count))
            .collect();
        assert!(kinds.contains(&(MANY_LOOKUPS, "cw-a", 4)), "{kinds:?}");
        assert!(kinds.contains(&(MANY_DENIED, "cw-b", 3)), "{kinds:?}");
        assert!(!kinds.iter().any(|k| k.1 == "cw-c"), "{kinds:?}");
        let many = items.iter().find(|i| i.kind == MANY_LOOKUPS).unwrap();
        assert_eq!(many.key, "many-lookups:cw-a:2026-11-23T09:00Z");
        assert_eq!(many.request_ids, vec!["r-0", "r-1", "r-2", "r-3"]);
        // The same record carries the same flags.
        let mut record = record_at("2026-11-23T09:02:00.000000Z", "cw-a");
        assert_eq!(rules.flags(&record, &activity), vec![MANY_LOOKUPS]);
        record.actor.caller_id = "cw-c".into();
        assert!(rules.flags(&record, &activity).is_empty());
    }

    /// The record of refusal `a`, as [`ReviewRules::flags`] sees it.
    fn refused_record(a: &Activity) -> AuditRecord {
        let mut record = record_at(&a.at, &a.caller_id);
        record.request_id.clone_from(&a.request_id);
        record.cpr.clone_from(&a.cpr);
        record.outcome = crate::Outcome::Denied;
        record.reason.clone_from(&a.reason);
        record.detail.clone_from(&a.detail);
        record
    }

    fn many_denied(rules: &ReviewRules, activity: &[Activity]) -> Vec<ReviewItem> {
        let mut items = rules.analyse(activity, &[]);
        items.retain(|i| i.kind == MANY_DENIED);
        items
    }

    #[test]
    fn many_denied_counts_distinct_citizens_not_refusals() {
        let rules = ReviewRules {
            max_denied_per_day: 5,
            ..ReviewRules::default()
        };
        // Six refusals for lack of relation, all of the same citizen.
        let activity: Vec<Activity> = (0..6)
            .map(|i| {
                let at = format!("2026-11-23T09:0{i}:00.000000Z");
                refusal(i, &at, "cw-a", "0101901235", no_relation())
            })
            .collect();
        assert!(many_denied(&rules, &activity).is_empty());
        assert!(
            !rules
                .flags(&refused_record(&activity[5]), &activity)
                .contains(&MANY_DENIED)
        );
        // Six distinct citizens: one above the threshold.
        let activity: Vec<Activity> = (0..6)
            .map(|i| {
                lookup(
                    i,
                    &format!("2026-11-23T09:0{i}:00.000000Z"),
                    "cw-a",
                    "denied",
                )
            })
            .collect();
        let items = many_denied(&rules, &activity);
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!(items[0].count, 6);
        assert_eq!(items[0].request_ids.len(), 6);
        assert!(
            items[0]
                .summary
                .starts_with("6 distinct citizens refused for lack of relation on 2026-11-23"),
            "{}",
            items[0].summary
        );
        assert!(
            rules
                .flags(&refused_record(&activity[5]), &activity)
                .contains(&MANY_DENIED)
        );
        // Five of them, each tried twice: ten refusals, five citizens, not above five.
        let twice: Vec<Activity> = (0..10)
            .map(|i| {
                let at = format!("2026-11-23T10:{i:02}:00.000000Z");
                let cpr = format!("01019{:05}", i % 5);
                refusal(i, &at, "cw-a", &cpr, no_relation())
            })
            .collect();
        assert!(many_denied(&rules, &twice).is_empty());
    }

    #[test]
    fn refusals_for_other_reasons_than_lack_of_relation_do_not_count() {
        let rules = ReviewRules {
            max_denied_per_day: 1,
            ..ReviewRules::default()
        };
        let why = |reason: Option<&'static str>, detail: Option<&str>| Why {
            reason,
            detail: detail.map(str::to_owned),
        };
        let others = [
            why(
                Some("PURPOSE_NOT_ALLOWED"),
                Some(
                    "permission denied: the calling system may not look up for the purpose follow-up",
                ),
            ),
            why(
                Some("SYSTEM_NOT_ADMITTED"),
                Some("permission denied: the calling system is not admitted"),
            ),
            // The reason decides, whatever the text says.
            Why {
                reason: Some("PURPOSE_NOT_ALLOWED"),
                ..legacy_no_relation()
            },
            // Recorded before reasons: by the text, which is another refusal's...
            why(
                None,
                Some(
                    "permission denied: the calling system may not look up for the purpose follow-up",
                ),
            ),
            // ...or the no-relation text alone, not as the gateway recorded a refusal...
            why(
                None,
                Some("you have no open case for this citizen in your department"),
            ),
            // ...or nothing at all.
            why(None, None),
        ];
        let activity: Vec<Activity> = others
            .into_iter()
            .enumerate()
            .map(|(i, why)| {
                let at = format!("2026-11-23T09:0{i}:00.000000Z");
                let cpr = format!("01019{i:05}");
                refusal(i, &at, "cw-a", &cpr, why)
            })
            .collect();
        assert!(many_denied(&rules, &activity).is_empty());
        for a in &activity {
            assert!(
                !rules
                    .flags(&refused_record(a), &activity)
                    .contains(&MANY_DENIED)
            );
        }
        // One refusal for lack of relation besides them is still not above one citizen.
        let mut with_one = activity.clone();
        with_one.push(lookup(8, "2026-11-23T09:08:00.000000Z", "cw-a", "denied"));
        assert!(many_denied(&rules, &with_one).is_empty());
        // A second one is.
        with_one.push(lookup(9, "2026-11-23T09:09:00.000000Z", "cw-a", "denied"));
        assert_eq!(
            many_denied(&rules, &with_one)[0].request_ids,
            ["r-8", "r-9"]
        );
    }

    /// The message is for people and may be reworded: the reason is what counts.
    #[test]
    fn a_reworded_refusal_for_lack_of_relation_is_counted_by_its_reason() {
        let rules = ReviewRules {
            max_denied_per_day: 1,
            ..ReviewRules::default()
        };
        let reworded = || Why {
            reason: Some(NO_RELATION),
            detail: Some("permission denied: ingen åben sag for borgeren i din forvaltning".into()),
        };
        let activity: Vec<Activity> = (0..2)
            .map(|i| {
                let at = format!("2026-11-23T09:0{i}:00.000000Z");
                refusal(i, &at, "cw-a", &format!("01019{i:05}"), reworded())
            })
            .collect();
        assert_eq!(many_denied(&rules, &activity)[0].count, 2);
        assert!(
            rules
                .flags(&refused_record(&activity[1]), &activity)
                .contains(&MANY_DENIED)
        );
    }

    /// Stores hold years of refusals recorded before refusals had reasons: those are still
    /// counted, by their detail, and together with the ones that have a reason.
    #[test]
    fn refusals_recorded_before_reasons_are_counted_by_their_detail() {
        let rules = ReviewRules {
            max_denied_per_day: 1,
            ..ReviewRules::default()
        };
        let old = refusal(
            1,
            "2026-11-23T09:01:00.000000Z",
            "cw-a",
            "0101900001",
            legacy_no_relation(),
        );
        let new = lookup(2, "2026-11-23T09:02:00.000000Z", "cw-a", "denied");
        assert!(new.reason.is_some() && old.reason.is_none());
        let activity = vec![old.clone(), new];
        assert_eq!(
            many_denied(&rules, &activity)[0].request_ids,
            ["r-1", "r-2"]
        );
        assert!(
            rules
                .flags(&refused_record(&old), &activity)
                .contains(&MANY_DENIED)
        );
        let two_old = vec![
            old.clone(),
            Activity {
                request_id: "r-3".into(),
                cpr: samblik_cpr::Cpr::parse("0101900003").ok(),
                ..old
            },
        ];
        assert_eq!(many_denied(&rules, &two_old)[0].count, 2);
    }

    #[test]
    fn a_streamed_lookup_is_one_lookup_however_many_departments_answered() {
        let rules = ReviewRules {
            max_lookups_per_hour: 2,
            ..ReviewRules::default()
        };
        // Two streamed lookups at 02:00 local time, each recorded once per department.
        let mut activity = Vec::new();
        for (id, minute) in [(1, 0), (2, 5)] {
            for _department in 0..3 {
                activity.push(lookup(
                    id,
                    &format!("2026-11-23T01:0{minute}:00.000000Z"),
                    "cw-a",
                    "answered",
                ));
            }
        }
        let mut break_glass = Vec::new();
        for _department in 0..3 {
            let mut record = record_at("2026-11-23T01:00:00.000000Z", "cw-a");
            record.request_id = "r-1".into();
            record.break_glass_reason = Some("akut".into());
            break_glass.push(record);
        }
        let items = rules.analyse(&activity, &break_glass);
        let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            vec!["outside-hours:r-2", "break-glass:r-1", "outside-hours:r-1"],
            "one item per lookup, and two lookups are not above two an hour"
        );
        let record = record_at("2026-11-23T01:05:00.000000Z", "cw-a");
        assert_eq!(rules.flags(&record, &activity), vec![OUTSIDE_HOURS]);
    }

    #[test]
    fn a_source_that_answered_about_another_citizen_is_one_item_per_lookup() {
        let rules = ReviewRules::default();
        let source = |id: &str, flag: Option<&str>| crate::SourceEntry {
            source_id: id.into(),
            status: if flag.is_some() { "error" } else { "ok" }.into(),
            cases: Vec::new(),
            flag: flag.map(str::to_owned),
        };
        // A streamed lookup with break-the-glass: one record per department, two of them from
        // sources that answered about someone else.
        let mut records = Vec::new();
        for (id, flag) in [
            ("jobcenter", None),
            ("child-welfare", Some(FOREIGN_CITIZEN)),
            ("housing", Some(FOREIGN_CITIZEN)),
        ] {
            let mut record = record_at("2026-11-23T10:00:00.000000Z", "cw-a");
            record.request_id = "r-1".into();
            record.break_glass_reason = Some("akut".into());
            record.sources = vec![source(id, flag)];
            records.push(record);
        }
        let items = rules.analyse(&[], &records);
        let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, vec!["break-glass:r-1", "foreign-citizen:r-1"]);
        let foreign = &items[1];
        assert_eq!(foreign.kind, FOREIGN_CITIZEN);
        assert!(
            foreign.summary.starts_with("child-welfare answered"),
            "{}",
            foreign.summary
        );
        assert!(rules.flags(&records[1], &[]).contains(&FOREIGN_CITIZEN));
        assert!(!rules.flags(&records[0], &[]).contains(&FOREIGN_CITIZEN));
    }

    #[test]
    fn the_latest_mark_wins_and_reviewed_items_leave_the_queue() {
        let rules = ReviewRules::default();
        let activity = vec![lookup(1, "2026-11-22T23:00:00.000000Z", "cw-a", "answered")];
        let mut items = rules.analyse(&activity, &[]);
        assert_eq!(items.len(), 1);
        let mark = |note: &str, at_: &str| ReviewMark {
            key: "outside-hours:r-1".into(),
            by: "aud".into(),
            at: at(at_),
            note: note.into(),
            count: None,
        };
        let marks = vec![
            mark("later", "2026-11-24T10:00:00Z"),
            mark("first", "2026-11-23T10:00:00Z"),
        ];
        apply_marks(&mut items, &marks, true);
        assert_eq!(items[0].review.as_ref().unwrap().note, "later");
        apply_marks(&mut items, &marks, false);
        assert!(items.is_empty());
    }

    #[test]
    fn a_mark_covers_an_item_as_it_was_and_a_grown_item_is_back_in_the_queue() {
        let rules = ReviewRules {
            max_lookups_per_hour: 2,
            ..ReviewRules::default()
        };
        let minute = |i: usize| format!("2026-11-23T09:{i:02}:00.000000Z");
        let mut activity: Vec<Activity> = (0..3)
            .map(|i| lookup(i, &minute(i), "cw-a", "answered"))
            .collect();
        let many = |activity: &[Activity]| {
            let mut items = rules.analyse(activity, &[]);
            items.retain(|i| i.kind == MANY_LOOKUPS);
            items
        };
        let items = many(&activity);
        let key = "many-lookups:cw-a:2026-11-23T09:00Z";
        assert_eq!(items[0].key, key);
        let mark = ReviewMark {
            key: key.into(),
            by: "aud".into(),
            at: at("2026-11-23T09:05:00Z"),
            note: "spoke to the caseworker".into(),
            count: Some(3),
        };
        let mut marked = items.clone();
        apply_marks(&mut marked, std::slice::from_ref(&mark), false);
        assert!(marked.is_empty(), "the item as marked is reviewed");
        // Later in the same hour the caller goes on looking up.
        activity.extend((3..40).map(|i| lookup(i, &minute(i), "cw-a", "answered")));
        let mut grown = many(&activity);
        apply_marks(&mut grown, std::slice::from_ref(&mark), false);
        assert_eq!(grown.len(), 1);
        assert_eq!(grown[0].count, 40);
        assert!(grown[0].review.is_none());
        assert!(
            grown[0].summary.contains("grown since reviewed at 3"),
            "{grown:?}"
        );
        // A mark from before marks kept a count covers the records up to its time.
        let legacy = ReviewMark {
            count: None,
            ..mark.clone()
        };
        let mut old = items;
        apply_marks(&mut old, std::slice::from_ref(&legacy), false);
        assert!(old.is_empty());
        let mut grown = many(&activity);
        apply_marks(&mut grown, &[legacy], false);
        assert_eq!(grown.len(), 1);
        // The mark's record keeps the count, and reads back with it.
        let mut record = record_at("2026-11-23T09:05:00.000000Z", "aud");
        let item = &many(&activity)[0];
        record.change = Some(ReviewMark::change_json(item, "checked", item.count));
        assert_eq!(ReviewMark::from_record(&record).unwrap().count, Some(40));
        record.change = Some(serde_json::json!({ "type": "review", "key": key, "note": "old" }));
        assert_eq!(ReviewMark::from_record(&record).unwrap().count, None);
    }

    #[test]
    fn a_group_key_names_its_window() {
        let rules = ReviewRules::default();
        assert_eq!(
            rules.window_of_key("many-lookups:cw:a:2026-11-23T09:00Z"),
            Some((at("2026-11-23T09:00:00Z"), at("2026-11-23T10:00:00Z")))
        );
        // Copenhagen's day starts at 23:00 UTC in winter.
        assert_eq!(
            rules.window_of_key("many-denied:cw-a:2026-11-22T23:00Z"),
            Some((at("2026-11-22T23:00:00Z"), at("2026-11-23T23:00:00Z")))
        );
        assert_eq!(rules.window_of_key("outside-hours:r-1"), None);
        assert_eq!(rules.window_of_key("many-lookups:cw-a:yesterday"), None);
        assert_eq!(rules.window_of_key("many-lookups:æøå"), None);
    }

    #[test]
    fn a_window_belongs_to_every_period_it_overlaps_and_a_lookup_to_the_one_it_is_in() {
        let rules = ReviewRules {
            max_lookups_per_hour: 1,
            ..ReviewRules::default()
        };
        let activity = vec![
            lookup(1, "2026-11-23T09:10:00.000000Z", "cw-a", "answered"),
            lookup(2, "2026-11-23T09:50:00.000000Z", "cw-a", "answered"),
        ];
        let items = rules.analyse(&activity, &[]);
        let many = items.iter().find(|i| i.kind == MANY_LOOKUPS).unwrap();
        assert!(many.overlaps(at("2026-11-23T09:30:00Z"), at("2026-11-23T10:30:00Z")));
        assert!(many.overlaps(at("2026-11-23T08:30:00Z"), at("2026-11-23T09:30:00Z")));
        assert!(!many.overlaps(at("2026-11-23T10:00:00Z"), at("2026-11-23T11:00:00Z")));
        assert!(!many.overlaps(at("2026-11-23T08:00:00Z"), at("2026-11-23T09:00:00Z")));
        let single = ReviewItem {
            at: at("2026-11-23T09:10:00Z"),
            window_end: at("2026-11-23T09:10:00Z"),
            ..many.clone()
        };
        assert!(single.overlaps(at("2026-11-23T09:10:00Z"), at("2026-11-23T09:11:00Z")));
        assert!(!single.overlaps(at("2026-11-23T09:00:00Z"), at("2026-11-23T09:10:00Z")));
    }
}

//! `samblik.v1.AuditService`: the access log for auditors (search, export, verify, the review
//! queue) and for the citizen ("who looked at my data"). Every call is itself audited, and its
//! record is durable before the answer leaves — an auditor's search of a citizen is in that
//! citizen's log too.

use crate::audit::AuditDraft;
pub use crate::audit::Verifier;
use crate::error::{GatewayError, Reason};
use crate::lookup::LookupPipeline;
use crate::registry_api::{begin, from_timestamp, refuse, timestamp};
use crate::rpc::{SpanKind, call};
use chrono::{DateTime, Duration, Utc};
use samblik_audit::review::{self, ReviewMark, ReviewRules};
use samblik_audit::search::{Activity, AuditQuery, Cursor};
use samblik_audit::verify::{Breaks, ChainSummary, VerifyError};
use samblik_audit::{Action, AuditRecord, Outcome};
use samblik_proto::Cpr;
use samblik_proto::v1::audit_service_server::AuditService;
use samblik_proto::v1::{
    self as pb, AuditFilter, ExportAuditRequest, ExportChunk, ExportFormat, MarkReviewedRequest,
    MyAccessLogRequest, MyAccessLogResponse, ReviewQueueRequest, ReviewQueueResponse,
    SearchAuditRequest, SearchAuditResponse, VerifyAuditRequest, VerifyAuditResponse,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

const AUDITOR: &[&str] = &["auditor"];
const CITIZEN: &[&str] = &["citizen"];
/// Page sizes.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;
/// The longest period the review queue and the `flagged` filter look at.
const MAX_REVIEW_DAYS: i64 = 92;
/// Records read per step of an export.
const EXPORT_STEP: usize = 1_000;
/// The shortest note a review mark is accepted with, and the longest.
const MIN_NOTE: usize = 5;
const MAX_NOTE: usize = 2_000;
/// What a citizen sees: the requests that showed someone their data.
const CITIZEN_VISIBLE: &[Action] = &[
    Action::Lookup,
    Action::LookupStream,
    Action::PolicyExplained,
    Action::ConsentsListed,
    Action::RequestsListed,
    Action::AuditSearched,
    Action::AuditExported,
];

fn chain_status(c: ChainSummary) -> pb::ChainStatus {
    pb::ChainStatus {
        chain: c.chain,
        records: c.records,
        checkpoints: u64::try_from(c.checkpoints).unwrap_or(u64::MAX),
        head_hash: c.head_hash,
    }
}

/// The audit API over the lookup pipeline's authenticator, audit log and store.
#[derive(Debug, Clone)]
pub struct AuditApi {
    pipeline: Arc<LookupPipeline>,
}

/// A search as asked: the store's query, plus the one filter the store cannot answer alone.
#[derive(Debug, Clone)]
struct Search {
    query: AuditQuery,
    flagged: bool,
}

fn unavailable(e: impl std::fmt::Display) -> GatewayError {
    tracing::error!(error = %e, "audit store unreadable");
    GatewayError::refused(Reason::AuditLogUnreadable, "the audit log cannot be read")
}

fn text_filter(value: &str, field: &str) -> Result<Option<String>, GatewayError> {
    match value.trim() {
        "" => Ok(None),
        v if v.len() > 128 => Err(GatewayError::refused(
            Reason::FieldInvalid,
            format!("{field} is longer than 128 characters"),
        )),
        v => Ok(Some(v.to_owned())),
    }
}

fn page_size(asked: u32) -> Result<usize, GatewayError> {
    match usize::try_from(asked).unwrap_or(usize::MAX) {
        0 => Ok(DEFAULT_PAGE),
        n if n <= MAX_PAGE => Ok(n),
        _ => Err(GatewayError::refused(
            Reason::FieldInvalid,
            format!("page_size must be at most {MAX_PAGE}"),
        )),
    }
}

fn cursor(token: &str) -> Result<Option<Cursor>, GatewayError> {
    if token.is_empty() {
        return Ok(None);
    }
    Cursor::decode(token)
        .map(Some)
        .ok_or_else(|| GatewayError::refused(Reason::FieldInvalid, "page_token is not valid"))
}

/// A period's bounds; either may be open.
type Period = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

fn period(
    from: Option<&prost_types::Timestamp>,
    until: Option<&prost_types::Timestamp>,
) -> Result<Period, GatewayError> {
    let from = from.map(|t| from_timestamp(t, "from")).transpose()?;
    let until = until.map(|t| from_timestamp(t, "until")).transpose()?;
    if let (Some(f), Some(u)) = (from, until)
        && f >= u
    {
        return Err(GatewayError::refused(
            Reason::FieldInvalid,
            "from must be before until",
        ));
    }
    Ok((from, until))
}

/// Refuses a period longer than the review queue looks at.
fn bounded(from: DateTime<Utc>, until: DateTime<Utc>) -> Result<(), GatewayError> {
    if until - from > Duration::days(MAX_REVIEW_DAYS) {
        return Err(GatewayError::refused(
            Reason::FieldInvalid,
            format!("the period must be at most {MAX_REVIEW_DAYS} days"),
        ));
    }
    Ok(())
}

impl Search {
    /// Validates `filter`; names the CPR to the draft and describes the rest in its detail.
    fn from_filter(
        filter: &AuditFilter,
        after: Option<Cursor>,
        draft: &mut AuditDraft,
    ) -> Result<Search, GatewayError> {
        let cpr = match filter.cpr.trim() {
            "" => None,
            text => {
                let cpr = Cpr::parse(text)?;
                draft.citizen(&cpr);
                Some(cpr)
            }
        };
        let (from, until) = period(filter.from.as_ref(), filter.until.as_ref())?;
        let query = AuditQuery {
            cpr,
            caller_id: text_filter(&filter.caller_id, "caller_id")?,
            department: text_filter(&filter.department, "department")?,
            from,
            until,
            actions: Vec::new(),
            outcomes: if filter.denied {
                vec![Outcome::Denied]
            } else {
                Vec::new()
            },
            break_glass: filter.break_glass,
            flagged_sources: false,
            request_ids: Vec::new(),
            after,
        };
        if filter.flagged {
            match (from, until) {
                (Some(f), Some(u)) => bounded(f, u)?,
                _ => {
                    return Err(GatewayError::refused(
                        Reason::FieldInvalid,
                        "flagged needs a period (from and until)",
                    ));
                }
            }
        }
        draft.detail(describe(&query, filter.flagged));
        Ok(Search {
            query,
            flagged: filter.flagged,
        })
    }
}

/// The filter in words, for the auditor's own audit record (the CPR is in the record's `cpr`).
fn describe(q: &AuditQuery, flagged: bool) -> String {
    let mut parts = Vec::new();
    if q.cpr.is_some() {
        parts.push("citizen".to_owned());
    }
    if let Some(c) = &q.caller_id {
        parts.push(format!("caller={c}"));
    }
    if let Some(d) = &q.department {
        parts.push(format!("department={d}"));
    }
    if let Some(f) = q.from {
        parts.push(format!("from={}", f.to_rfc3339()));
    }
    if let Some(u) = q.until {
        parts.push(format!("until={}", u.to_rfc3339()));
    }
    if q.break_glass {
        parts.push("break-glass".into());
    }
    if !q.outcomes.is_empty() {
        parts.push("denied".into());
    }
    if flagged {
        parts.push("flagged".into());
    }
    if parts.is_empty() {
        "filter: none".into()
    } else {
        format!("filter: {}", parts.join(", "))
    }
}

/// One page of records with their flags.
struct Page {
    records: Vec<(AuditRecord, Vec<&'static str>)>,
    next: Option<Cursor>,
}

impl AuditApi {
    pub fn new(pipeline: Arc<LookupPipeline>) -> Self {
        AuditApi { pipeline }
    }

    fn rules(&self) -> &ReviewRules {
        &self.pipeline.audit_access().rules
    }

    /// The lookups of `callers` around the records of `records`, for their flags.
    async fn activity_around(
        &self,
        records: &[AuditRecord],
    ) -> Result<Vec<Activity>, GatewayError> {
        let times: Vec<DateTime<Utc>> = records
            .iter()
            .filter(|r| matches!(r.action, Action::Lookup | Action::LookupStream))
            .filter_map(|r| DateTime::parse_from_rfc3339(&r.at).ok())
            .map(|t| t.with_timezone(&Utc))
            .collect();
        let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) else {
            return Ok(Vec::new());
        };
        let (from, until) = self.rules().context(*first, *last);
        let mut callers: Vec<String> = records.iter().map(|r| r.actor.caller_id.clone()).collect();
        callers.sort();
        callers.dedup();
        self.pipeline
            .registry()
            .activity(from, until, callers)
            .await
            .map_err(unavailable)
    }

    /// The request ids the review queue flags in the period of `search` (which is bounded):
    /// every lookup of a flagged window that overlaps it, not only the lookups inside it.
    async fn flagged_ids(&self, search: &Search) -> Result<HashSet<String>, GatewayError> {
        let (Some(from), Some(until)) = (search.query.from, search.query.until) else {
            return Ok(HashSet::new());
        };
        let items = self.review_items(from, until).await?;
        Ok(items.into_iter().flat_map(|i| i.request_ids).collect())
    }

    /// Up to `size` records of `search` after its cursor, with flags.
    async fn page(&self, search: &Search, size: usize) -> Result<Page, GatewayError> {
        let registry = self.pipeline.registry();
        let flagged = if search.flagged {
            Some(self.flagged_ids(search).await?)
        } else {
            None
        };
        let mut query = search.query.clone();
        let mut found = Vec::new();
        let mut more = false;
        // With `flagged`, the store cannot filter: read on until the page is full.
        let step = if flagged.is_some() {
            size * 4
        } else {
            size + 1
        };
        loop {
            let batch = registry
                .search(query.clone(), step)
                .await
                .map_err(unavailable)?;
            let exhausted = batch.len() < step;
            query.after = batch.last().map(Cursor::of);
            for record in batch {
                if flagged
                    .as_ref()
                    .is_some_and(|ids| !ids.contains(&record.request_id))
                {
                    continue;
                }
                if found.len() == size {
                    more = true;
                    break;
                }
                found.push(record);
            }
            if more || exhausted {
                break;
            }
        }
        let activity = self.activity_around(&found).await?;
        let next = if more {
            found.last().map(Cursor::of)
        } else {
            None
        };
        let records = found
            .into_iter()
            .map(|r| {
                let flags = self.rules().flags(&r, &activity);
                (r, flags)
            })
            .collect();
        Ok(Page { records, next })
    }

    /// The review items of a period: its lookups' items and the windows that overlap it, each
    /// counted whole (a period's edge never cuts a window short). Without the auditors' marks.
    async fn review_items(
        &self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<review::ReviewItem>, GatewayError> {
        let registry = self.pipeline.registry();
        let (read_from, read_until) = self.rules().context(from, until);
        let activity = registry
            .activity(read_from, read_until, Vec::new())
            .await
            .map_err(unavailable)?;
        let singled_out = |break_glass, flagged_sources| AuditQuery {
            from: Some(from),
            until: Some(until),
            break_glass,
            flagged_sources,
            ..AuditQuery::default()
        };
        let mut records = registry
            .search(singled_out(true, false), 100_000)
            .await
            .map_err(unavailable)?;
        records.extend(
            registry
                .search(singled_out(false, true), 100_000)
                .await
                .map_err(unavailable)?,
        );
        let mut items = self.rules().analyse(&activity, &records);
        items.retain(|i| i.overlaps(from, until));
        Ok(items)
    }

    /// The review item `key` names, as it is now. A group key names its window, which is read
    /// whole; a single lookup's key is looked for in the longest period the queue shows.
    async fn current_item(&self, key: &str) -> Result<Option<review::ReviewItem>, GatewayError> {
        let now = Utc::now();
        let (from, until) = self
            .rules()
            .window_of_key(key)
            .unwrap_or((now - Duration::days(MAX_REVIEW_DAYS), now));
        let items = self.review_items(from, until).await?;
        Ok(items.into_iter().find(|i| i.key == key))
    }

    /// Every review mark ever made.
    async fn marks(&self) -> Result<Vec<ReviewMark>, GatewayError> {
        let records = self
            .pipeline
            .registry()
            .search(
                AuditQuery {
                    actions: vec![Action::ReviewMarked],
                    ..AuditQuery::default()
                },
                1_000_000,
            )
            .await
            .map_err(unavailable)?;
        Ok(records.iter().filter_map(ReviewMark::from_record).collect())
    }

    async fn search(
        &self,
        request: Request<SearchAuditRequest>,
        request_id: &str,
    ) -> Result<SearchAuditResponse, GatewayError> {
        let (mut draft, _) = begin(
            &self.pipeline,
            &request,
            request_id,
            Action::AuditSearched,
            AUDITOR,
        )
        .await?;
        let message = request.into_inner();
        let asked = page_size(message.page_size).and_then(|size| {
            let after = cursor(&message.page_token)?;
            let filter = message.filter.unwrap_or_default();
            Ok((size, Search::from_filter(&filter, after, &mut draft)?))
        });
        let (size, search) = match asked {
            Ok(a) => a,
            Err(e) => return refuse(draft, e).await,
        };
        let page = match self.page(&search, size).await {
            Ok(p) => p,
            Err(e) => return refuse(draft, e).await,
        };
        draft.answered(Vec::new()).await?;
        Ok(SearchAuditResponse {
            entries: page
                .records
                .iter()
                .map(|(r, flags)| entry(r, flags))
                .collect(),
            next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
        })
    }

    async fn export(
        &self,
        request: Request<ExportAuditRequest>,
        request_id: &str,
    ) -> Result<ReceiverStream<Result<ExportChunk, Status>>, GatewayError> {
        let (mut draft, _) = begin(
            &self.pipeline,
            &request,
            request_id,
            Action::AuditExported,
            AUDITOR,
        )
        .await?;
        let message = request.into_inner();
        let format = match ExportFormat::try_from(message.format) {
            Ok(f @ (ExportFormat::Csv | ExportFormat::JsonLines)) => f,
            _ => {
                let e = GatewayError::refused(
                    Reason::FieldInvalid,
                    "format must be EXPORT_FORMAT_CSV or EXPORT_FORMAT_JSON_LINES",
                );
                return refuse(draft, e).await;
            }
        };
        let filter = message.filter.unwrap_or_default();
        let mut search = match Search::from_filter(&filter, None, &mut draft) {
            Ok(s) => s,
            Err(e) => return refuse(draft, e).await,
        };
        // The export's record is durable before the first byte leaves.
        draft.answered(Vec::new()).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let api = self.clone();
        let request_id = request_id.to_owned();
        tokio::spawn(
            async move {
                let mut header = true;
                loop {
                    let chunk = api.page(&search, EXPORT_STEP).await.and_then(|page| {
                        let data = encode(format, &page.records, header)?;
                        Ok((data, page.next))
                    });
                    header = false;
                    let (data, next) = match chunk {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx.send(Err(e.into_status(&request_id))).await;
                            return;
                        }
                    };
                    if tx.send(Ok(ExportChunk { data })).await.is_err() {
                        return; // The auditor went away; the export's record stands.
                    }
                    match next {
                        Some(c) => search.query.after = Some(c),
                        None => return,
                    }
                }
            }
            .instrument(tracing::Span::current()),
        );
        Ok(ReceiverStream::new(rx))
    }

    async fn verify(
        &self,
        request: Request<VerifyAuditRequest>,
        request_id: &str,
    ) -> Result<VerifyAuditResponse, GatewayError> {
        let (mut draft, _) = begin(
            &self.pipeline,
            &request,
            request_id,
            Action::AuditVerified,
            AUDITOR,
        )
        .await?;
        let Some(verifier) = self.pipeline.audit_access().verifier.clone() else {
            let e = GatewayError::refused(
                Reason::VerificationNotConfigured,
                "verification is not configured",
            );
            return refuse(draft, e).await;
        };
        let result = tokio::task::spawn_blocking(move || verifier()).await;
        let response = match result {
            Ok(Ok(chains)) => VerifyAuditResponse {
                ok: true,
                chains: chains.into_iter().map(chain_status).collect(),
                ..VerifyAuditResponse::default()
            },
            Ok(Err(VerifyError::Broken(breaks))) => {
                let Breaks {
                    first,
                    further,
                    unlisted,
                    verified,
                } = *breaks;
                VerifyAuditResponse {
                    ok: false,
                    chains: verified.into_iter().map(chain_status).collect(),
                    broken_chain: first.chain,
                    broken_seq: first.seq,
                    reason: first.reason,
                    further: further
                        .into_iter()
                        .map(|b| pb::BrokenRecord {
                            chain: b.chain,
                            seq: b.seq,
                            reason: b.reason,
                        })
                        .collect(),
                    unlisted,
                }
            }
            Ok(Err(VerifyError::Store(e))) => return refuse(draft, unavailable(e)).await,
            Err(e) => return refuse(draft, unavailable(e)).await,
        };
        draft.detail(if response.ok {
            "every chain verifies".into()
        } else {
            let further = response.further.len() as u64 + response.unlisted;
            format!(
                "chain {:?} breaks at record {}{}",
                response.broken_chain,
                response.broken_seq,
                Breaks::and_further(further)
            )
        });
        draft.answered(Vec::new()).await?;
        Ok(response)
    }

    async fn review_queue(
        &self,
        request: Request<ReviewQueueRequest>,
        request_id: &str,
    ) -> Result<ReviewQueueResponse, GatewayError> {
        let (mut draft, _) = begin(
            &self.pipeline,
            &request,
            request_id,
            Action::ReviewQueueRead,
            AUDITOR,
        )
        .await?;
        let message = request.into_inner();
        let asked = period(message.from.as_ref(), message.until.as_ref()).and_then(|p| {
            let until = p.1.unwrap_or_else(Utc::now);
            let from = p.0.unwrap_or(until - Duration::days(7));
            if from >= until {
                return Err(GatewayError::refused(
                    Reason::FieldInvalid,
                    "from must be before until",
                ));
            }
            bounded(from, until)?;
            Ok((from, until))
        });
        let (from, until) = match asked {
            Ok(p) => p,
            Err(e) => return refuse(draft, e).await,
        };
        draft.detail(format!(
            "review queue from={} until={}",
            from.to_rfc3339(),
            until.to_rfc3339()
        ));
        let items = async {
            let mut items = self.review_items(from, until).await?;
            review::apply_marks(&mut items, &self.marks().await?, message.include_reviewed);
            Ok(items)
        };
        let items = match items.await {
            Ok(i) => i,
            Err(e) => return refuse(draft, e).await,
        };
        draft.answered(Vec::new()).await?;
        Ok(ReviewQueueResponse {
            items: items.iter().map(review_item).collect(),
        })
    }

    async fn mark_reviewed(
        &self,
        request: Request<MarkReviewedRequest>,
        request_id: &str,
    ) -> Result<pb::ReviewItem, GatewayError> {
        let (mut draft, caller) = begin(
            &self.pipeline,
            &request,
            request_id,
            Action::ReviewMarked,
            AUDITOR,
        )
        .await?;
        let message = request.into_inner();
        let key = message.key.trim();
        let note = message.note.trim();
        let kind = key.split(':').next().unwrap_or_default();
        let known = [
            review::BREAK_GLASS,
            review::OUTSIDE_HOURS,
            review::MANY_LOOKUPS,
            review::MANY_DENIED,
        ];
        let problem = if !known.contains(&kind) || key.len() <= kind.len() + 1 || key.len() > 300 {
            Some("key is not a review item's key".to_owned())
        } else if note.chars().count() < MIN_NOTE || note.chars().count() > MAX_NOTE {
            Some(format!("note must be {MIN_NOTE} to {MAX_NOTE} characters"))
        } else {
            None
        };
        if let Some(p) = problem {
            return refuse(draft, GatewayError::refused(Reason::FieldInvalid, p)).await;
        }
        // A mark covers an item as it is (see `ReviewMark::covers`), so there must be one: a
        // key that names nothing yet, such as a coming hour's, cannot be marked in advance.
        let item = match self.current_item(key).await {
            Ok(Some(item)) => item,
            Ok(None) => {
                let e = GatewayError::refused(
                    Reason::ItemNotFound,
                    "no review item has this key: mark an item the review queue lists",
                );
                return refuse(draft, e).await;
            }
            Err(e) => return refuse(draft, e).await,
        };
        // The mark covers what the auditor saw: a window that grew after the queue showed it
        // stays in the queue (older clients say nothing: the item as it is now).
        let seen = match usize::try_from(message.seen_count) {
            Ok(0) | Err(_) => item.count,
            Ok(seen) => seen.min(item.count),
        };
        draft.detail(format!("reviewed {kind}"));
        draft
            .answered_with_change(ReviewMark::change_json(&item, note, seen))
            .await?;
        let mark = ReviewMark {
            key: item.key.clone(),
            by: caller.id,
            at: Utc::now(),
            note: note.to_owned(),
            count: Some(seen),
        };
        let mut items = vec![item];
        review::apply_marks(&mut items, std::slice::from_ref(&mark), true);
        Ok(items.first().map(review_item).unwrap_or_default())
    }

    /// Up to `size` accesses `query` finds, newest first, and where the next page begins, if
    /// there is one. An access is a request, however many records it wrote — a streamed lookup
    /// writes one per department that answered, and other requests' records may fall between
    /// them — and is given by its first record, which says when it happened (all of a
    /// request's records name the same caller, purpose and break-the-glass). It is shown where
    /// that record falls, and only there: the request's later records, on this page or an
    /// earlier one, are skipped. The next page begins after the first record of the page's last
    /// access.
    async fn accesses(
        &self,
        query: AuditQuery,
        size: usize,
    ) -> Result<(Vec<AuditRecord>, Option<Cursor>), GatewayError> {
        let registry = self.pipeline.registry();
        let mut shown: Vec<AuditRecord> = Vec::with_capacity(size);
        // The first record of every request met so far.
        let mut first: HashMap<String, (String, u64)> = HashMap::new();
        let mut after = query.after.clone();
        loop {
            let step = AuditQuery {
                after: after.clone(),
                ..query.clone()
            };
            let records = registry.search(step, size + 1).await.map_err(unavailable)?;
            let mut unknown: Vec<String> = Vec::new();
            for r in &records {
                if !first.contains_key(&r.request_id) && !unknown.contains(&r.request_id) {
                    unknown.push(r.request_id.clone());
                }
            }
            first.extend(self.first_records(&query, unknown).await?);
            for r in &records {
                let is_first = first
                    .get(&r.request_id)
                    .is_some_and(|(chain, seq)| *chain == r.chain && *seq == r.seq);
                if !is_first {
                    // A later record: the request is shown where its first record is.
                    continue;
                }
                if shown.len() == size {
                    let next = shown.last().map(Cursor::of);
                    return Ok((shown, next));
                }
                shown.push(r.clone());
            }
            if records.len() <= size {
                return Ok((shown, None));
            }
            after = records.last().map(Cursor::of);
        }
    }

    /// The first record of each of `requests` that `query` (but for its cursor) finds, as
    /// (chain, seq).
    async fn first_records(
        &self,
        query: &AuditQuery,
        requests: Vec<String>,
    ) -> Result<HashMap<String, (String, u64)>, GatewayError> {
        let mut first = HashMap::new();
        if requests.is_empty() {
            // An empty list matches every request.
            return Ok(first);
        }
        // A streamed lookup writes a record per department: a few steps' worth at most.
        let step = requests.len().saturating_mul(4);
        let mut by_request = AuditQuery {
            request_ids: requests,
            after: None,
            ..query.clone()
        };
        loop {
            let records = self
                .pipeline
                .registry()
                .search(by_request.clone(), step)
                .await
                .map_err(unavailable)?;
            // Newest first, to the end: the last record met of a request is its first.
            for r in &records {
                first.insert(r.request_id.clone(), (r.chain.clone(), r.seq));
            }
            if records.len() < step {
                return Ok(first);
            }
            by_request.after = records.last().map(Cursor::of);
        }
    }

    async fn my_access_log(
        &self,
        request: Request<MyAccessLogRequest>,
        request_id: &str,
    ) -> Result<MyAccessLogResponse, GatewayError> {
        let (mut draft, caller) = begin(
            &self.pipeline,
            &request,
            request_id,
            Action::CitizenViewed,
            CITIZEN,
        )
        .await?;
        let Some(cpr) = caller.citizen.clone() else {
            let e = GatewayError::refused(Reason::CitizenNotNamed, "the token names no citizen");
            return refuse(draft, e).await;
        };
        draft.citizen(&cpr);
        let message = request.into_inner();
        let asked =
            page_size(message.page_size).and_then(|size| Ok((size, cursor(&message.page_token)?)));
        let (size, after) = match asked {
            Ok(a) => a,
            Err(e) => return refuse(draft, e).await,
        };
        let query = AuditQuery {
            cpr: Some(cpr.clone()),
            actions: CITIZEN_VISIBLE.to_vec(),
            outcomes: vec![Outcome::Answered],
            after,
            ..AuditQuery::default()
        };
        let (accesses, next) = match self.accesses(query, size).await {
            Ok(page) => page,
            Err(e) => return refuse(draft, e).await,
        };
        draft.answered(Vec::new()).await?;
        let names = self.pipeline.audit_access().citizen_sees_names;
        let entries = accesses
            .iter()
            .map(|r| access_log_entry(r, names))
            .collect();
        Ok(MyAccessLogResponse {
            entries,
            next_page_token: next.map(|c| c.encode()).unwrap_or_default(),
        })
    }
}

fn wire_time(at: &str) -> Option<prost_types::Timestamp> {
    DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| timestamp(t.with_timezone(&Utc)))
}

fn entry(r: &AuditRecord, flags: &[&str]) -> pb::AuditEntry {
    pb::AuditEntry {
        chain: r.chain.clone(),
        seq: r.seq,
        at: wire_time(&r.at),
        request_id: r.request_id.clone(),
        action: r.action.as_str().to_owned(),
        outcome: r.outcome.as_str().to_owned(),
        caller_id: r.actor.caller_id.clone(),
        caller_name: r.actor.name.clone(),
        department: r.actor.department.clone(),
        municipality: r.actor.municipality.clone(),
        system: r.actor.system.clone().unwrap_or_default(),
        cpr: r
            .cpr
            .as_ref()
            .map(|c| c.as_str().to_owned())
            .unwrap_or_default(),
        purpose: r.purpose.clone().unwrap_or_default(),
        break_glass_reason: r.break_glass_reason.clone().unwrap_or_default(),
        detail: r.detail.clone().unwrap_or_default(),
        reason: r.reason.clone().unwrap_or_default(),
        sources: r
            .sources
            .iter()
            .map(|s| pb::AuditSource {
                source_id: s.source_id.clone(),
                status: s.status.clone(),
                cases: s
                    .cases
                    .iter()
                    .map(|c| pb::AuditCase {
                        case_id: c.case_id.clone(),
                        tier: u32::from(c.tier),
                        basis: c.basis.clone().unwrap_or_default(),
                        rule_ids: c.rule_ids.clone(),
                        fields: c.fields.clone(),
                    })
                    .collect(),
            })
            .collect(),
        policy_version: r.policy_version.clone(),
        change_json: r.change.as_ref().map(|c| c.to_string()).unwrap_or_default(),
        hash: r.hash.clone(),
        flags: flags.iter().map(|f| (*f).to_owned()).collect(),
    }
}

fn review_item(i: &review::ReviewItem) -> pb::ReviewItem {
    let review = i.review.as_ref();
    pb::ReviewItem {
        key: i.key.clone(),
        kind: i.kind.to_owned(),
        caller_id: i.caller_id.clone(),
        department: i.department.clone(),
        at: Some(timestamp(i.at)),
        window_end: Some(timestamp(i.window_end)),
        count: u32::try_from(i.count).unwrap_or(u32::MAX),
        request_ids: i
            .request_ids
            .iter()
            .take(review::MAX_ITEM_REQUESTS)
            .cloned()
            .collect(),
        summary: i.summary.clone(),
        reviewed: review.is_some(),
        reviewed_by: review.map(|m| m.by.clone()).unwrap_or_default(),
        reviewed_at: review.map(|m| timestamp(m.at)),
        review_note: review.map(|m| m.note.clone()).unwrap_or_default(),
    }
}

fn access_log_entry(r: &AuditRecord, names: bool) -> pb::AccessLogEntry {
    pb::AccessLogEntry {
        at: wire_time(&r.at),
        department: r.actor.department.clone(),
        municipality: r.actor.municipality.clone(),
        caller_name: if names {
            r.actor.name.clone()
        } else {
            String::new()
        },
        purpose: r.purpose.clone().unwrap_or_default(),
        action: match r.action {
            Action::Lookup | Action::LookupStream => "looked up your cases",
            Action::PolicyExplained => "checked what the rules allow others to see",
            Action::ConsentsListed => "read your consents",
            Action::RequestsListed => "read a request for access to your cases",
            Action::AuditSearched | Action::AuditExported => "audited accesses to your data",
            _ => "read your data",
        }
        .to_owned(),
        break_glass: r.break_glass_reason.is_some(),
    }
}

/// The columns of a CSV export.
const CSV_HEADER: &[&str] = &[
    "at",
    "chain",
    "seq",
    "request_id",
    "action",
    "outcome",
    "caller_id",
    "caller_name",
    "department",
    "municipality",
    "system",
    "cpr",
    "purpose",
    "break_glass_reason",
    "detail",
    "reason",
    "disclosed",
    "flags",
    "policy_version",
    "hash",
];

/// A spreadsheet must never run a cell as a formula.
fn cell(text: &str) -> String {
    match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{text}"),
        _ => text.to_owned(),
    }
}

/// What a record disclosed, compactly: `source:status[case/tier fields;…]`.
fn disclosed(r: &AuditRecord) -> String {
    r.sources
        .iter()
        .map(|s| {
            let cases: Vec<String> = s
                .cases
                .iter()
                .map(|c| format!("{}/tier{} {}", c.case_id, c.tier, c.fields.join(" ")))
                .collect();
            format!("{}:{}[{}]", s.source_id, s.status, cases.join("; "))
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn encode(
    format: ExportFormat,
    records: &[(AuditRecord, Vec<&'static str>)],
    header: bool,
) -> Result<Vec<u8>, GatewayError> {
    let failed = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "export encoding failed");
        GatewayError::refused(
            Reason::AuditLogUnreadable,
            "the export could not be encoded",
        )
    };
    match format {
        ExportFormat::JsonLines => {
            let mut out = Vec::new();
            for (r, flags) in records {
                let mut value = serde_json::to_value(r).map_err(|e| failed(&e))?;
                if let Some(object) = value.as_object_mut() {
                    object.insert("hash".into(), r.hash.clone().into());
                    object.insert("flags".into(), flags.clone().into());
                }
                serde_json::to_writer(&mut out, &value).map_err(|e| failed(&e))?;
                out.push(b'\n');
            }
            Ok(out)
        }
        _ => {
            let mut w = csv::Writer::from_writer(Vec::new());
            if header {
                w.write_record(CSV_HEADER).map_err(|e| failed(&e))?;
            }
            for (r, flags) in records {
                let row = [
                    r.at.clone(),
                    r.chain.clone(),
                    r.seq.to_string(),
                    r.request_id.clone(),
                    r.action.as_str().to_owned(),
                    r.outcome.as_str().to_owned(),
                    r.actor.caller_id.clone(),
                    r.actor.name.clone(),
                    r.actor.department.clone(),
                    r.actor.municipality.clone(),
                    r.actor.system.clone().unwrap_or_default(),
                    r.cpr
                        .as_ref()
                        .map(|c| c.as_str().to_owned())
                        .unwrap_or_default(),
                    r.purpose.clone().unwrap_or_default(),
                    r.break_glass_reason.clone().unwrap_or_default(),
                    r.detail.clone().unwrap_or_default(),
                    r.reason.clone().unwrap_or_default(),
                    disclosed(r),
                    flags.join(" "),
                    r.policy_version.clone(),
                    r.hash.clone(),
                ];
                w.write_record(row.iter().map(|c| cell(c)))
                    .map_err(|e| failed(&e))?;
            }
            w.into_inner().map_err(|e| failed(&e))
        }
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn search(
        &self,
        request: Request<SearchAuditRequest>,
    ) -> Result<Response<SearchAuditResponse>, Status> {
        call(SpanKind::Api, "AuditSearch", async |id| {
            AuditApi::search(self, request, id).await
        })
        .await
    }

    type ExportStream = ReceiverStream<Result<ExportChunk, Status>>;

    async fn export(
        &self,
        request: Request<ExportAuditRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        call(SpanKind::Api, "AuditExport", async |id| {
            AuditApi::export(self, request, id).await
        })
        .await
    }

    async fn verify(
        &self,
        request: Request<VerifyAuditRequest>,
    ) -> Result<Response<VerifyAuditResponse>, Status> {
        call(SpanKind::Api, "AuditVerify", async |id| {
            AuditApi::verify(self, request, id).await
        })
        .await
    }

    async fn review_queue(
        &self,
        request: Request<ReviewQueueRequest>,
    ) -> Result<Response<ReviewQueueResponse>, Status> {
        call(SpanKind::Api, "ReviewQueue", async |id| {
            AuditApi::review_queue(self, request, id).await
        })
        .await
    }

    async fn mark_reviewed(
        &self,
        request: Request<MarkReviewedRequest>,
    ) -> Result<Response<pb::ReviewItem>, Status> {
        call(SpanKind::Api, "MarkReviewed", async |id| {
            AuditApi::mark_reviewed(self, request, id).await
        })
        .await
    }

    async fn my_access_log(
        &self,
        request: Request<MyAccessLogRequest>,
    ) -> Result<Response<MyAccessLogResponse>, Status> {
        call(SpanKind::Api, "MyAccessLog", async |id| {
            AuditApi::my_access_log(self, request, id).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_never_start_a_formula() {
        assert_eq!(cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(cell("-1"), "'-1");
        assert_eq!(cell("jobcenter"), "jobcenter");
    }

    #[test]
    fn the_filter_description_never_holds_the_cpr() {
        let q = AuditQuery {
            cpr: Cpr::parse("0101901235").ok(),
            caller_id: Some("cw-1".into()),
            ..AuditQuery::default()
        };
        let text = describe(&q, true);
        assert!(!text.contains("0101901235"));
        assert_eq!(text, "filter: citizen, caller=cw-1, flagged");
    }
}

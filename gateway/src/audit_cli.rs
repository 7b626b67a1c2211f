//! `samblik audit search | export | review | mark-reviewed | my-log`: the auditor's and the
//! citizen's commands, over `samblik.v1.AuditService` (so they are authorised and audited exactly
//! as the panel's pages are).

use crate::client::authorized;
use crate::registry_api::timestamp;
use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use samblik_proto::v1::audit_service_client::AuditServiceClient;
use samblik_proto::v1::{
    AuditFilter, ExportAuditRequest, ExportFormat, MarkReviewedRequest, MyAccessLogRequest,
    ReviewQueueRequest, SearchAuditRequest,
};
use std::fmt::Write as _;
use std::time::Duration;
use tonic::transport::Channel;

/// The search filter shared by `search` and `export`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// The citizen looked up.
    #[arg(long)]
    pub cpr: Option<String>,
    /// The caller (token subject), e.g. cw-jobcenter-003.
    #[arg(long)]
    pub caller: Option<String>,
    /// The caller's department, e.g. jobcenter.
    #[arg(long)]
    pub department: Option<String>,
    /// From this time (RFC 3339) or day (YYYY-MM-DD, UTC), inclusive.
    #[arg(long, value_parser = parse_time)]
    pub from: Option<DateTime<Utc>>,
    /// Until this time or day, exclusive.
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// Only break-the-glass lookups.
    #[arg(long)]
    pub break_glass: bool,
    /// Only refused requests.
    #[arg(long)]
    pub denied: bool,
    /// Only records with an anomaly flag (needs --from and --until).
    #[arg(long)]
    pub flagged: bool,
}

/// A time on the command line: RFC 3339, or a day (its start, UTC).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
        .map_err(|_| "expected an RFC 3339 time or a day (YYYY-MM-DD)".to_owned())
}

impl FilterArgs {
    fn filter(&self) -> AuditFilter {
        AuditFilter {
            cpr: self.cpr.clone().unwrap_or_default(),
            caller_id: self.caller.clone().unwrap_or_default(),
            department: self.department.clone().unwrap_or_default(),
            from: self.from.map(timestamp),
            until: self.until.map(timestamp),
            break_glass: self.break_glass,
            denied: self.denied,
            flagged: self.flagged,
        }
    }
}

/// How a command reaches the gateway.
#[derive(Debug)]
pub struct Call {
    pub channel: Channel,
    pub token: String,
    pub timeout: Duration,
}

impl Call {
    fn client(&self) -> AuditServiceClient<Channel> {
        AuditServiceClient::new(self.channel.clone())
    }

    fn request<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        authorized(message, &self.token, self.timeout)
    }
}

fn time_text(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// Prints up to `limit` matching records, newest first, one line each.
pub async fn search(call: &Call, filter: &FilterArgs, limit: usize) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut token = String::new();
    let mut shown = 0usize;
    loop {
        let page_size = u32::try_from(limit.saturating_sub(shown).min(500)).unwrap_or(500);
        let response = call
            .client()
            .search(call.request(SearchAuditRequest {
                filter: Some(filter.filter()),
                page_size,
                page_token: token,
            })?)
            .await?
            .into_inner();
        for e in &response.entries {
            let cases: usize = e.sources.iter().map(|s| s.cases.len()).sum();
            let _ = writeln!(
                out,
                "{}  {:<18} {:<12} {:<22} {:<16} {:<10} {:<16} {} case(s){}{}  [{}]",
                time_text(e.at.as_ref()),
                e.action,
                e.outcome,
                e.caller_id,
                e.department,
                e.cpr,
                e.purpose,
                cases,
                if e.flags.is_empty() {
                    String::new()
                } else {
                    format!("  flags: {}", e.flags.join(","))
                },
                if e.break_glass_reason.is_empty() {
                    String::new()
                } else {
                    format!("  break-glass: {}", e.break_glass_reason)
                },
                e.request_id
            );
            shown += 1;
        }
        token = response.next_page_token;
        if token.is_empty() || shown >= limit {
            break;
        }
    }
    let _ = writeln!(out, "{shown} record(s)");
    Ok(out)
}

/// Writes every matching record to `out` as CSV or JSON lines; returns the bytes written.
pub async fn export(
    call: &Call,
    filter: &FilterArgs,
    format: ExportFormat,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<usize> {
    let mut stream = call
        .client()
        .export(call.request(ExportAuditRequest {
            filter: Some(filter.filter()),
            format: format as i32,
        })?)
        .await?
        .into_inner();
    let mut written = 0;
    while let Some(chunk) = stream.message().await? {
        out.write_all(&chunk.data)
            .context("cannot write the export")?;
        written += chunk.data.len();
    }
    out.flush()?;
    Ok(written)
}

/// The review queue, one item per line.
pub async fn review(
    call: &Call,
    from: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    include_reviewed: bool,
) -> anyhow::Result<String> {
    let response = call
        .client()
        .review_queue(call.request(ReviewQueueRequest {
            from: from.map(timestamp),
            until: until.map(timestamp),
            include_reviewed,
        })?)
        .await?
        .into_inner();
    let mut out = String::new();
    for i in &response.items {
        let _ = writeln!(
            out,
            "{}  {:<14} {:<22} {:<16} {}{}\n    key: {}",
            time_text(i.at.as_ref()),
            i.kind,
            i.caller_id,
            i.department,
            i.summary,
            if i.reviewed {
                format!("  (reviewed by {}: {})", i.reviewed_by, i.review_note)
            } else {
                String::new()
            },
            i.key
        );
    }
    let _ = writeln!(out, "{} item(s) to review", response.items.len());
    Ok(out)
}

/// Marks one review item as reviewed.
pub async fn mark_reviewed(call: &Call, key: String, note: String) -> anyhow::Result<String> {
    let item = call
        .client()
        .mark_reviewed(call.request(MarkReviewedRequest { key, note })?)
        .await?
        .into_inner();
    Ok(format!(
        "{} marked as reviewed by {}\n",
        item.key, item.reviewed_by
    ))
}

/// A citizen's "who looked at my data".
pub async fn my_log(call: &Call) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut token = String::new();
    loop {
        let response = call
            .client()
            .my_access_log(call.request(MyAccessLogRequest {
                page_size: 500,
                page_token: token,
            })?)
            .await?
            .into_inner();
        for e in &response.entries {
            let who = if e.caller_name.is_empty() {
                e.department.clone()
            } else {
                format!("{} ({})", e.caller_name, e.department)
            };
            let _ = writeln!(
                out,
                "{}  {}  {} — purpose: {}{}",
                time_text(e.at.as_ref()),
                who,
                e.action,
                e.purpose,
                if e.break_glass {
                    "  [emergency access]"
                } else {
                    ""
                }
            );
        }
        token = response.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    Ok(out)
}

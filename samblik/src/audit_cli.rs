//! `samblik audit search | export | review | mark-reviewed | my-log`: the auditor's and the
//! citizen's commands, over `samblik.v1.AuditService` (so they are authorised and audited exactly
//! as the panel's pages are).

use crate::client::authorized;
use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use samblik_gateway::registry_api::timestamp;
use samblik_proto::v1::audit_service_client::AuditServiceClient;
use samblik_proto::v1::{
    AccessLogEntry, AuditEntry, AuditFilter, ExportAuditRequest, ExportFormat, MarkReviewedRequest,
    MyAccessLogRequest, ReviewItem, ReviewQueueRequest, SearchAuditRequest,
};
use std::borrow::Cow;
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

/// Whether `c` must not reach a terminal as it is: a control character (an escape sequence, a
/// line break, a carriage return) or one that reorders the text around it.
fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Text from the log as the terminal shows it. Much of it was written by caseworkers (a
/// break-the-glass reason, a purpose) or auditors (a review note): an escape sequence or a line
/// break in it could rewrite or hide the auditor's lines, so those characters are shown escaped
/// (`\u{1b}`, `\n`); every other character, Danish letters too, as it is.
pub(crate) fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unprintable) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unprintable(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One record of a search, on one line.
fn entry_line(e: &AuditEntry) -> String {
    let cases: usize = e.sources.iter().map(|s| s.cases.len()).sum();
    format!(
        "{}  {:<18} {:<12} {:<22} {:<16} {:<10} {:<16} {} case(s){}{}  [{}]",
        time_text(e.at.as_ref()),
        shown(&e.action),
        shown(&e.outcome),
        shown(&e.caller_id),
        shown(&e.department),
        shown(&e.cpr),
        shown(&e.purpose),
        cases,
        if e.flags.is_empty() {
            String::new()
        } else {
            format!("  flags: {}", shown(&e.flags.join(",")))
        },
        if e.break_glass_reason.is_empty() {
            String::new()
        } else {
            format!("  break-glass: {}", shown(&e.break_glass_reason))
        },
        shown(&e.request_id)
    )
}

/// One review item, on two lines.
fn item_lines(i: &ReviewItem) -> String {
    format!(
        "{}  {:<14} {:<22} {:<16} {}{}\n    key: {}  count: {}",
        time_text(i.at.as_ref()),
        shown(&i.kind),
        shown(&i.caller_id),
        shown(&i.department),
        shown(&i.summary),
        if i.reviewed {
            format!(
                "  (reviewed by {}: {})",
                shown(&i.reviewed_by),
                shown(&i.review_note)
            )
        } else {
            String::new()
        },
        shown(&i.key),
        // For `mark-reviewed --count`: the mark then covers what this listing showed.
        i.count
    )
}

/// One access in a citizen's log, on one line.
fn access_line(e: &AccessLogEntry) -> String {
    let who = if e.caller_name.is_empty() {
        shown(&e.department).into_owned()
    } else {
        format!("{} ({})", shown(&e.caller_name), shown(&e.department))
    };
    format!(
        "{}  {}  {} — purpose: {}{}",
        time_text(e.at.as_ref()),
        who,
        shown(&e.action),
        shown(&e.purpose),
        if e.break_glass {
            "  [emergency access]"
        } else {
            ""
        }
    )
}

/// Prints up to `limit` matching records, newest first, one line each.
pub async fn search(call: &Call, filter: &FilterArgs, limit: usize) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut token = String::new();
    let mut count = 0usize;
    loop {
        let page_size = u32::try_from(limit.saturating_sub(count).min(500)).unwrap_or(500);
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
            let _ = writeln!(out, "{}", entry_line(e));
            count += 1;
        }
        token = response.next_page_token;
        if token.is_empty() || count >= limit {
            break;
        }
    }
    let _ = writeln!(out, "{count} record(s)");
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
        let _ = writeln!(out, "{}", item_lines(i));
    }
    let _ = writeln!(out, "{} item(s) to review", response.items.len());
    Ok(out)
}

/// Marks one review item as reviewed.
/// `seen_count`: the item's count as the queue showed it (`None`: the item as it is now).
pub async fn mark_reviewed(
    call: &Call,
    key: String,
    note: String,
    seen_count: Option<u32>,
) -> anyhow::Result<String> {
    let item = call
        .client()
        .mark_reviewed(call.request(MarkReviewedRequest {
            key,
            note,
            seen_count: seen_count.unwrap_or(0),
        })?)
        .await?
        .into_inner();
    if !item.reviewed {
        return Ok(format!(
            "{} marked as reviewed as far as you saw it; it has grown since ({})\n",
            shown(&item.key),
            shown(&item.summary)
        ));
    }
    Ok(format!(
        "{} marked as reviewed by {}\n",
        shown(&item.key),
        shown(&item.reviewed_by)
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
            let _ = writeln!(out, "{}", access_line(e));
        }
        token = response.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_log_cannot_rewrite_the_auditors_terminal() {
        let entry = AuditEntry {
            action: "lookup".into(),
            caller_id: "cw-1".into(),
            purpose: "prepare-meeting".into(),
            break_glass_reason: "Akut på Ærø\u{1b}[2K\r\u{1b}[1Aall fine\nsecond line\u{202e}"
                .into(),
            request_id: "r-1".into(),
            ..AuditEntry::default()
        };
        let line = entry_line(&entry);
        assert!(
            !line.chars().any(unprintable),
            "{line:?} reaches the terminal raw"
        );
        assert!(
            line.contains(
                "break-glass: Akut på Ærø\\u{1b}[2K\\r\\u{1b}[1Aall fine\\nsecond line\\u{202e}"
            ),
            "{line}"
        );
        let item = ReviewItem {
            kind: "break-glass".into(),
            summary: "break-the-glass lookup\u{1b}]0;pwned\u{7}".into(),
            reviewed: true,
            reviewed_by: "aud-1".into(),
            review_note: "ok\r\nkey: many-lookups:fake".into(),
            key: "break-glass:r-1".into(),
            ..ReviewItem::default()
        };
        let lines = item_lines(&item);
        assert_eq!(lines.lines().count(), 2, "{lines}");
        assert!(
            !lines.chars().any(|c| c.is_control() && c != '\n'),
            "{lines:?}"
        );
        assert!(lines.contains("ok\\r\\nkey: many-lookups:fake"), "{lines}");
        let access = AccessLogEntry {
            caller_name: "Søren\u{1b}[8m".into(),
            department: "jobcenter".into(),
            purpose: "prepare-meeting\n".into(),
            ..AccessLogEntry::default()
        };
        let line = access_line(&access);
        assert!(line.starts_with("  Søren\\u{1b}[8m (jobcenter)"), "{line}");
        assert!(!line.chars().any(unprintable), "{line:?}");
        // Text without such characters is shown as it is.
        assert!(matches!(
            shown("Ålbæk, Ørsted"),
            Cow::Borrowed("Ålbæk, Ørsted")
        ));
    }
}

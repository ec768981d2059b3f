//! FHIR R4 knowledge independent of HTTP and storage: the definitions, validation, the
//! registry of supported types, OperationOutcome, Bundles, and the server-owned `meta` elements.

pub mod bundle;
pub mod definitions;
pub mod json;
pub mod outcome;
pub mod patch;
pub mod primitives;
pub mod registry;
pub mod search;
pub mod validate;
pub mod workflow;

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, Time};

/// Milliseconds since the Unix epoch, UTC: how Liaison stores `meta.lastUpdated`.
pub type Millis = i64;

/// The current time, truncated to the millisecond precision Liaison stores.
pub fn now_millis() -> Millis {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    (nanos / 1_000_000) as Millis
}

/// A new server-assigned resource id: a UUID version 7, whose leading bits are the time, so
/// that ids assigned one after another sort together. Every index keyed by id (the resource
/// table's primary key, the search tables' owner indexes, the audit chain) then takes new rows
/// at its end, a few pages per commit, instead of one random page per row (a version 4 UUID).
/// The time it reveals is the creation time that `_history` shows anyway.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn datetime(ms: Millis) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// A FHIR `instant` such as `2024-05-01T10:00:00.123Z`.
pub fn format_instant(ms: Millis) -> String {
    let t = datetime(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// An HTTP-date (RFC 9110 §5.6.7) for `Last-Modified`.
pub fn format_http_date(ms: Millis) -> String {
    let t = datetime(ms);
    let weekday = &t.weekday().to_string()[..3];
    let month = &t.month().to_string()[..3];
    format!("{weekday}, {:02} {month} {:04} {:02}:{:02}:{:02} GMT", t.day(), t.year(), t.hour(), t.minute(), t.second())
}

/// Parses a FHIR instant or dateTime (a date alone means its first moment, UTC) to milliseconds.
pub fn parse_date_time(s: &str) -> Option<Millis> {
    if !primitives::is_date_time(s) {
        return None;
    }
    let t = if s.contains('T') {
        OffsetDateTime::parse(s, &Rfc3339).ok()?
    } else {
        let mut parts = s.split('-').map(|p| p.parse::<u32>().ok());
        let year = parts.next()??;
        let month = parts.next().flatten().unwrap_or(1);
        let day = parts.next().flatten().unwrap_or(1);
        let month = Month::try_from(u8::try_from(month).ok()?).ok()?;
        let date = Date::from_calendar_date(i32::try_from(year).ok()?, month, u8::try_from(day).ok()?).ok()?;
        date.with_time(Time::MIDNIGHT).assume_utc()
    };
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The range `[low, high)` of instants a date, dateTime or instant covers, from its precision
/// (search.html#date: `2024-05` is all of May 2024). Dates without a zone are taken as UTC.
pub fn date_range(s: &str) -> Option<(Millis, Millis)> {
    let low = parse_date_time(s)?;
    let (date, time) = s.split_once('T').unwrap_or((s, ""));
    if !time.is_empty() {
        let seconds = time.split(['Z', '+', '-']).next().unwrap_or("");
        let width = match seconds.split_once('.') {
            Some((_, frac)) if frac.len() >= 3 => 1,
            Some((_, frac)) => 10_i64.pow(3 - frac.len() as u32),
            None => 1000,
        };
        return Some((low, low.saturating_add(width)));
    }
    let start = datetime(low);
    let end = match date.len() {
        4 => start.replace_year(start.year() + 1).ok()?,
        7 => {
            let (y, m) = if start.month() == Month::December {
                (start.year() + 1, Month::January)
            } else {
                (start.year(), start.month().next())
            };
            start.replace_day(1).ok()?.replace_year(y).ok()?.replace_month(m).ok()?
        }
        _ => start + time::Duration::DAY,
    };
    Some((low, i64::try_from(end.unix_timestamp_nanos() / 1_000_000).ok()?))
}

/// Sets the elements the server owns: `id`, `meta.versionId` and `meta.lastUpdated` (R4
/// resource.html#Meta). Everything else the client sent stays as it was.
pub fn stamp(resource: &mut Map<String, Value>, id: &str, version_id: i64, last_updated: Millis) {
    resource.insert("id".into(), Value::from(id));
    let meta = resource.entry("meta").or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    if let Value::Object(meta) = meta {
        meta.insert("versionId".into(), Value::from(version_id.to_string()));
        meta.insert("lastUpdated".into(), Value::from(format_instant(last_updated)));
    }
    // Keep resourceType and id first, as FHIR JSON conventionally shows them.
    resource.shift_remove("id").map(|v| resource.shift_insert(1, "id".into(), v));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip() {
        let ms = parse_date_time("2024-02-29T23:59:58.123+01:00").unwrap();
        assert_eq!(format_instant(ms), "2024-02-29T22:59:58.123Z");
        assert_eq!(format_http_date(ms), "Thu, 29 Feb 2024 22:59:58 GMT");
        assert_eq!(parse_date_time("2024-03"), parse_date_time("2024-03-01T00:00:00Z"));
        assert_eq!(parse_date_time("2024-03-01T10:00:00"), None);
    }

    #[test]
    fn partial_dates_are_ranges() {
        let at = |s| parse_date_time(s).unwrap();
        assert_eq!(date_range("2024"), Some((at("2024-01-01T00:00:00Z"), at("2025-01-01T00:00:00Z"))));
        assert_eq!(date_range("2024-12"), Some((at("2024-12-01T00:00:00Z"), at("2025-01-01T00:00:00Z"))));
        assert_eq!(date_range("2024-02-28"), Some((at("2024-02-28T00:00:00Z"), at("2024-02-29T00:00:00Z"))));
        let t = at("2024-02-28T10:00:00Z");
        assert_eq!(date_range("2024-02-28T10:00:00Z"), Some((t, t + 1000)));
        assert_eq!(date_range("2024-02-28T10:00:00.5Z"), Some((t + 500, t + 600)));
    }
}

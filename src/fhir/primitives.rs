//! Lexical checks of the FHIR R4 primitive types in their JSON form (datatypes.html#primitive).
//!
//! Each check returns `Err` with a short reason that names the rule, never the value itself, so
//! that messages carry no clinical content.

use serde_json::Value;

/// FHIR strings SHALL NOT exceed 1 MiB (datatypes.html#string).
const MAX_STRING_BYTES: usize = 1024 * 1024;

/// Checks `value` against primitive type `code`. Unknown codes pass: they are not primitives.
pub fn check(code: &str, value: &Value) -> Result<(), String> {
    match code {
        "boolean" => value.is_boolean().then_some(()).ok_or_else(|| "must be a JSON boolean".into()),
        "integer" => integer(value, i64::from(i32::MIN)),
        "unsignedInt" => integer(value, 0),
        "positiveInt" => integer(value, 1),
        "decimal" => decimal(value),
        _ => {
            let Some(text) = value.as_str() else {
                return Err("must be a JSON string".into());
            };
            if text.is_empty() {
                return Err("must not be empty".into());
            }
            if text.len() > MAX_STRING_BYTES {
                return Err("exceeds 1 MiB".into());
            }
            // datatypes.html#string: no control characters other than tab, CR and LF.
            if text.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\r' | '\n')) {
                return Err("must not contain control characters".into());
            }
            string_form(code, text)
        }
    }
}

fn integer(value: &Value, min: i64) -> Result<(), String> {
    let n = value.as_number().ok_or("must be a JSON number")?;
    let n = n.as_i64().ok_or("must be an integer in the 32-bit range")?;
    if n < min || n > i64::from(i32::MAX) {
        return Err(format!("must be an integer from {min} to {}", i32::MAX));
    }
    Ok(())
}

fn decimal(value: &Value) -> Result<(), String> {
    let n = value.as_number().ok_or("must be a JSON number")?;
    // With serde_json's arbitrary_precision the literal text is kept, so precision survives;
    // reject what no system can hold as a double.
    match n.as_f64() {
        Some(f) if f.is_finite() && n.to_string().len() <= 64 => Ok(()),
        _ => Err("must be a decimal within the range of a double".into()),
    }
}

fn string_form(code: &str, s: &str) -> Result<(), String> {
    let ok = match code {
        "id" => s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
        "code" => {
            !s.starts_with(char::is_whitespace)
                && !s.ends_with(char::is_whitespace)
                && !s.contains("  ")
                && !s.contains(['\t', '\r', '\n'])
        }
        "uri" | "url" | "canonical" => !s.contains(char::is_whitespace),
        "oid" => is_oid(s),
        "uuid" => is_uuid(s),
        "date" => is_date(s),
        "dateTime" => is_date_time(s),
        "instant" => is_instant(s),
        "time" => is_time(s),
        "base64Binary" => is_base64(s),
        "xhtml" => return xhtml(s),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("is not a valid {code}"))
    }
}

fn digits(s: &str, n: usize) -> Option<u32> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD` with real month and day numbers.
pub fn is_date(s: &str) -> bool {
    let mut parts = s.split('-');
    let Some(year) = parts.next().and_then(|y| digits(y, 4)).filter(|y| *y > 0) else {
        return false;
    };
    let Some(month) = parts.next() else {
        return true;
    };
    let Some(month) = digits(month, 2).filter(|m| (1..=12).contains(m)) else {
        return false;
    };
    let Some(day) = parts.next() else { return true };
    let Some(day) = digits(day, 2) else {
        return false;
    };
    parts.next().is_none() && day >= 1 && day <= days_in_month(year, month)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `hh:mm:ss` with an optional fraction.
pub fn is_time(s: &str) -> bool {
    let (whole, frac) = s.split_once('.').unwrap_or((s, "1"));
    let mut parts = whole.split(':');
    let ok = |p: Option<&str>, max: u32| p.and_then(|p| digits(p, 2)).is_some_and(|v| v <= max);
    ok(parts.next(), 23)
        && ok(parts.next(), 59)
        && ok(parts.next(), 60)
        && parts.next().is_none()
        && !frac.is_empty()
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// A date, or a full date and time with a time zone (partial times are not allowed).
pub fn is_date_time(s: &str) -> bool {
    match s.split_once('T') {
        None => is_date(s),
        Some((date, time)) => date.len() == 10 && is_date(date) && is_zoned_time(time),
    }
}

/// A full date and time with a time zone.
pub fn is_instant(s: &str) -> bool {
    s.split_once('T').is_some_and(|(date, time)| date.len() == 10 && is_date(date) && is_zoned_time(time))
}

fn is_zoned_time(s: &str) -> bool {
    if let Some(local) = s.strip_suffix('Z') {
        return is_time(local);
    }
    let Some(split) = s.rfind(['+', '-']) else {
        return false;
    };
    let (local, zone) = s.split_at(split);
    let zone = &zone[1..];
    let zone_ok = zone
        .split_once(':')
        // R4: (0[0-9]|1[0-3]):[0-5][0-9] or 14:00.
        .is_some_and(|(h, m)| match (digits(h, 2), digits(m, 2)) {
            (Some(h), Some(m)) => (h <= 13 && m <= 59) || (h == 14 && m == 0),
            _ => false,
        });
    is_time(local) && zone_ok
}

/// Elements a narrative may use (narrative.html, txt-1: HTML 4.0 chapters 7-11 except 9.4, and
/// 15, with `a` and `img`).
const NARRATIVE_ELEMENTS: &[&str] = &[
    "a",
    "abbr",
    "acronym",
    "address",
    "b",
    "basefont",
    "big",
    "blockquote",
    "br",
    "caption",
    "center",
    "cite",
    "code",
    "col",
    "colgroup",
    "dd",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "font",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "kbd",
    "li",
    "ol",
    "p",
    "pre",
    "q",
    "s",
    "samp",
    "small",
    "span",
    "strike",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "tt",
    "u",
    "ul",
    "var",
];

/// Narrative XHTML (narrative.html): a `div` in the XHTML namespace using only the allowed
/// elements, with no event handlers, scripts or `javascript:` URLs. A lexical check of tags
/// and attributes, enough to keep active content out of clinical viewers.
fn xhtml(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("is not valid narrative XHTML: {why}"));
    let body = s.trim();
    if !body.starts_with("<div") || !body.ends_with("</div>") {
        return bad("it must be a single div element");
    }
    let root_end = body.find('>').unwrap_or(0);
    if !body[..root_end].contains("http://www.w3.org/1999/xhtml") {
        return bad("the div must be in the XHTML namespace (xmlns=\"http://www.w3.org/1999/xhtml\")");
    }
    let mut rest = body;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        if let Some(comment) = rest.strip_prefix("!--") {
            rest = comment.find("-->").map(|end| &comment[end + 3..]).unwrap_or("");
            continue;
        }
        let tag_text = &rest[..rest.find('>').unwrap_or(rest.len())];
        let tag = tag_text.trim_start_matches('/');
        let name_end = tag.find(|c: char| c.is_whitespace() || c == '/').unwrap_or(tag.len());
        let name = tag[..name_end].to_ascii_lowercase();
        if !NARRATIVE_ELEMENTS.contains(&name.as_str()) {
            return bad("it uses an element narratives may not contain");
        }
        let lower = tag[name_end..].to_ascii_lowercase();
        let attribute_names = lower.split(|c: char| c.is_whitespace()).filter_map(|a| a.split('=').next());
        for attr in attribute_names {
            if attr.starts_with("on") {
                return bad("event handler attributes are not allowed");
            }
        }
        if lower.contains("javascript:") || lower.contains("vbscript:") {
            return bad("script URLs are not allowed");
        }
    }
    Ok(())
}

fn is_oid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:oid:") else {
        return false;
    };
    let mut arcs = rest.split('.');
    let first_ok = matches!(arcs.next(), Some("0" | "1" | "2"));
    let mut count = 0;
    let rest_ok = arcs.all(|a| {
        count += 1;
        !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) && (a == "0" || !a.starts_with('0'))
    });
    first_ok && rest_ok && count > 0
}

fn is_uuid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:uuid:") else {
        return false;
    };
    let groups: Vec<&str> = rest.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

fn is_base64(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let body = compact.strip_suffix(b"==").or_else(|| compact.strip_suffix(b"=")).unwrap_or(&compact);
    compact.len().is_multiple_of(4) && body.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates_follow_the_r4_grammar() {
        for good in ["2024", "2024-02", "2024-02-29", "2023-12-31"] {
            assert!(is_date(good), "{good}");
        }
        for bad in ["24", "2024-13", "2023-02-29", "2024-1-01", "2024-01-01T", ""] {
            assert!(!is_date(bad), "{bad}");
        }
    }

    #[test]
    fn date_times_need_a_zone_when_they_have_a_time() {
        assert!(is_date_time("2024-05-01T10:00:00Z"));
        assert!(is_date_time("2024-05-01T10:00:00.123+02:00"));
        assert!(is_date_time("2024-05"));
        assert!(!is_date_time("2024-05-01T10:00:00"));
        assert!(!is_date_time("2024-05-01T10:00Z"));
        assert!(!is_instant("2024-05-01"));
        assert!(is_instant("2015-02-07T13:28:17.239-05:00"));
    }

    #[test]
    fn numbers_respect_their_ranges() {
        assert!(check("integer", &json!(-5)).is_ok());
        assert!(check("integer", &json!(2_147_483_648_i64)).is_err());
        assert!(check("positiveInt", &json!(0)).is_err());
        assert!(check("unsignedInt", &json!(0)).is_ok());
        assert!(check("integer", &json!(1.5)).is_err());
        assert!(check("decimal", &json!("1.5")).is_err());
        assert!(check("decimal", &serde_json::from_str::<Value>("1e400").unwrap()).is_err());
    }

    #[test]
    fn string_forms_are_checked() {
        assert!(check("id", &json!("abc-1.2")).is_ok());
        assert!(check("id", &json!("a/b")).is_err());
        assert!(check("id", &json!("x".repeat(65))).is_err());
        assert!(check("code", &json!(" active")).is_err());
        assert!(check("string", &json!("")).is_err());
        assert!(check("oid", &json!("urn:oid:1.2.3")).is_ok());
        assert!(check("uuid", &json!("urn:uuid:A1B2")).is_err());
        assert!(check("base64Binary", &json!("aGVsbG8=")).is_ok());
        assert!(check("base64Binary", &json!("aGVsbG8")).is_err());
        assert!(check("boolean", &json!("true")).is_err());
        assert!(check("string", &json!("a\u{0}b")).is_err());
        assert!(check("string", &json!("line\nbreak")).is_ok());
        assert!(check("date", &json!("0000-01-01")).is_err());
        assert!(!is_date_time("2024-05-01T10:00:00+14:30"));
        assert!(is_date_time("2024-05-01T10:00:00+14:00"));
    }

    #[test]
    fn narratives_keep_to_safe_xhtml() {
        let div = |inner: &str| json!(format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{inner}</div>"));
        assert!(
            check("xhtml", &div("<p>Plan <b>agreed</b></p><!-- note --><table><tr><td>x</td></tr></table>")).is_ok()
        );
        assert!(check("xhtml", &div("<script>alert(1)</script>")).is_err());
        assert!(check("xhtml", &div("<p onclick=\"x()\">a</p>")).is_err());
        assert!(check("xhtml", &div("<a href=\"javascript:x()\">a</a>")).is_err());
        assert!(check("xhtml", &div("<iframe src=\"x\"></iframe>")).is_err());
        assert!(check("xhtml", &json!("<div>no namespace</div>")).is_err());
    }
}

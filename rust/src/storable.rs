//! What PostgreSQL can store of what a job hands back, decided before its
//! report is queued, so that no report is refused for its data: a result
//! must be valid JSON of at most MAX_RESULT_BYTES without a \u0000 escape
//! (jsonb refuses it), or the job fails with ResultNotStorable instead. The
//! last_error of a report that cannot be stored is made here too. A log
//! line never fails its job: its text is made storable and cut to
//! MAX_LOG_BYTES (log_message, log_fields).

use serde_json::Value;

/// The largest encoded result stored, as for inputs (dispatch.py).
pub const MAX_RESULT_BYTES: usize = 1 << 20;

/// The longest message, and the longest fields' JSON, of a log line
/// (bytes): what is longer is cut, saying how much was.
pub const MAX_LOG_BYTES: usize = 4096;

/// The error type of a job whose report cannot be stored (forge.errors).
const NOT_STORABLE: &str = "forge.errors.ResultNotStorable";

/// The JSON escape of NUL, which jsonb refuses.
const NUL_ESCAPE: &str = "\\u0000";

/// A result as it will be stored, or why it cannot be.
pub fn result_text(bytes: Vec<u8>) -> Result<String, String> {
    if bytes.len() > MAX_RESULT_BYTES {
        return Err(format!(
            "it is {} bytes encoded, over the limit of {MAX_RESULT_BYTES} (1 MiB)",
            bytes.len()
        ));
    }
    let text = json_text(bytes)?;
    if has_nul_escape(&text) {
        return Err(
            "it contains a NUL character (\\u0000 in JSON), which PostgreSQL's jsonb refuses"
                .into(),
        );
    }
    Ok(text)
}

/// An error payload (Python's JSON object, its text already made storable
/// by the worker) as text. Nothing else is checked: an error PostgreSQL
/// refuses anyway is found by the reporter and replaced by a failure saying
/// so, like any refused report.
pub fn error_text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// last_error of an attempt whose report cannot be stored: `message` says
/// which job, which report and why.
pub fn not_storable(message: &str, attempt: i32) -> String {
    serde_json::json!({
        "type": NOT_STORABLE,
        "message": message,
        "traceback": null,
        "attempt": attempt,
    })
    .to_string()
}

/// A log line's message as stored: NUL (which text refuses) replaced by
/// U+FFFD, cut to MAX_LOG_BYTES with a marker saying how many bytes were cut.
pub fn log_message(text: String) -> String {
    let text = without_nul(text);
    if text.len() <= MAX_LOG_BYTES {
        return text;
    }
    let widest = format!(" [{} bytes cut]", text.len()).len();
    let keep = char_floor(&text, MAX_LOG_BYTES - widest);
    format!("{} [{} bytes cut]", &text[..keep], text.len() - keep)
}

/// A log line's fields (JSON from the worker) as jsonb takes them: valid
/// JSON without a \u0000 escape as it is; one with such escapes without
/// them (its NUL characters replaced by U+FFFD); anything else, or JSON
/// over MAX_LOG_BYTES, as an object holding the text ({"forge_invalid"} or
/// {"forge_cut", "bytes"}: what the job logged stays readable).
pub fn log_fields(bytes: Vec<u8>) -> String {
    let text = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    let valid = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
    let text = match (valid, has_nul_escape(&text)) {
        (true, false) => text,
        (true, true) => match serde_json::from_str::<Value>(&text) {
            Ok(value) => replace_nul(value).to_string(),
            Err(_) => wrapped("forge_invalid", &text, None),
        },
        (false, _) => wrapped("forge_invalid", &without_nul(text), None),
    };
    if text.len() <= MAX_LOG_BYTES {
        return text;
    }
    wrapped("forge_cut", &text, Some(text.len()))
}

/// {key: text} (and the original size as "bytes"), with as much of `text`
/// as fits in MAX_LOG_BYTES once encoded.
fn wrapped(key: &str, text: &str, bytes: Option<usize>) -> String {
    let mut keep = char_floor(text, MAX_LOG_BYTES);
    loop {
        let mut object = serde_json::Map::new();
        object.insert(key.into(), Value::String(text[..keep].into()));
        if let Some(n) = bytes {
            object.insert("bytes".into(), n.into());
        }
        let encoded = Value::Object(object).to_string();
        if encoded.len() <= MAX_LOG_BYTES {
            return encoded;
        }
        keep = char_floor(text, keep * 3 / 4);
    }
}

fn replace_nul(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(without_nul(s)),
        Value::Array(items) => Value::Array(items.into_iter().map(replace_nul).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (without_nul(k), replace_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

fn without_nul(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{fffd}")
    } else {
        text
    }
}

/// The largest char boundary of `text` at or below `at`.
fn char_floor(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn json_text(bytes: Vec<u8>) -> Result<String, String> {
    let text = String::from_utf8(bytes).map_err(|_| "it is not UTF-8".to_string())?;
    serde_json::from_str::<serde::de::IgnoredAny>(&text)
        .map_err(|e| format!("it is not valid JSON: {e}"))?;
    Ok(text)
}

/// Whether valid JSON text holds a \u0000 escape. Backslashes only occur
/// as escapes inside strings, so skipping each escaped character is exact
/// ("\\u0000" is an escaped backslash, then text).
fn has_nul_escape(text: &str) -> bool {
    if !text.contains(NUL_ESCAPE) {
        return false; // the common case, without a byte-by-byte walk
    }
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b[i + 1..].starts_with(&NUL_ESCAPE.as_bytes()[1..]) {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_must_be_json_without_nul_and_at_most_1_mib() {
        assert_eq!(
            result_text(b"{\"a\": [1, 2]}".to_vec()).unwrap(),
            "{\"a\": [1, 2]}"
        );
        assert!(result_text(b"{\"a\":".to_vec())
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(result_text(vec![0xff]).unwrap_err().contains("UTF-8"));
        assert!(result_text(br#"["ok", {"k": "a\u0000b"}]"#.to_vec())
            .unwrap_err()
            .contains("NUL"));
        assert!(result_text(br#""a\\u0000b""#.to_vec()).is_ok()); // a backslash, then text
        assert!(result_text(br#""a\\\u0000b""#.to_vec()).is_err()); // a backslash, then NUL
        let limit = format!("\"{}\"", "x".repeat(MAX_RESULT_BYTES - 2));
        assert!(result_text(limit.into_bytes()).is_ok());
        let over = format!("\"{}\"", "x".repeat(MAX_RESULT_BYTES - 1));
        assert!(result_text(over.into_bytes())
            .unwrap_err()
            .contains("1048577 bytes"));
    }

    #[test]
    fn error_payloads_are_taken_as_they_are() {
        assert_eq!(error_text(b"{}".to_vec()), "{}");
        assert_eq!(error_text(vec![b'"', 0xff, b'"']), "\"\u{fffd}\"");
    }

    #[test]
    fn log_messages_lose_nul_and_are_cut_to_4_kib_saying_so() {
        assert_eq!(log_message("a\0b".into()), "a\u{fffd}b");
        let exact = "x".repeat(MAX_LOG_BYTES);
        assert_eq!(log_message(exact.clone()), exact);
        let long = "é".repeat(MAX_LOG_BYTES); // 2 bytes each: the cut falls on a char boundary
        let cut = log_message(long);
        assert!(cut.len() <= MAX_LOG_BYTES, "{}", cut.len());
        let kept = cut.find(" [").unwrap();
        assert!(cut.ends_with(&format!(" [{} bytes cut]", 2 * MAX_LOG_BYTES - kept)));
    }

    #[test]
    fn log_fields_are_always_json_jsonb_takes() {
        let ok = br#"{"amount": 12, "who": "a\\u0000b"}"#.to_vec(); // an escaped backslash: kept
        assert_eq!(log_fields(ok.clone()), String::from_utf8(ok).unwrap());
        let nul: Value =
            serde_json::from_str(&log_fields(br#"{"k\u0000": ["a\u0000b"]}"#.to_vec())).unwrap();
        assert_eq!(nul, serde_json::json!({"k\u{fffd}": ["a\u{fffd}b"]}));
        let bad: Value = serde_json::from_str(&log_fields(b"{\"a\": \0\xff".to_vec())).unwrap();
        assert_eq!(
            bad,
            serde_json::json!({"forge_invalid": "{\"a\": \u{fffd}\u{fffd}"})
        );
        let big = format!("{{\"q\": \"{}\"}}", "\\\"".repeat(MAX_LOG_BYTES));
        let cut = log_fields(big.clone().into_bytes());
        assert!(cut.len() <= MAX_LOG_BYTES, "{}", cut.len());
        let cut: Value = serde_json::from_str(&cut).unwrap();
        assert_eq!(cut["bytes"], big.len());
        assert!(big.starts_with(cut["forge_cut"].as_str().unwrap()));
    }

    #[test]
    fn the_not_storable_error_is_a_last_error_object() {
        let error: serde_json::Value = serde_json::from_str(&not_storable("why \"x\"", 3)).unwrap();
        assert_eq!(error["type"], "forge.errors.ResultNotStorable");
        assert_eq!(error["message"], "why \"x\"");
        assert_eq!(error["attempt"], 3);
        assert!(error["traceback"].is_null());
    }
}

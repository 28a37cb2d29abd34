//! What PostgreSQL can store of what a job hands back, decided before its
//! report is queued, so that no report is refused for its data: a result
//! must be valid JSON of at most MAX_RESULT_BYTES without a \u0000 escape
//! (jsonb refuses it), or the job fails with ResultNotStorable instead. The
//! last_error of a report that cannot be stored is made here too.

/// The largest encoded result stored, as for inputs (dispatch.py).
pub const MAX_RESULT_BYTES: usize = 1 << 20;

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
    fn the_not_storable_error_is_a_last_error_object() {
        let error: serde_json::Value = serde_json::from_str(&not_storable("why \"x\"", 3)).unwrap();
        assert_eq!(error["type"], "forge.errors.ResultNotStorable");
        assert_eq!(error["message"], "why \"x\"");
        assert_eq!(error["attempt"], 3);
        assert!(error["traceback"].is_null());
    }
}

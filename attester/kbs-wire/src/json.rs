//! What a parser of a KBS resource may say about a document that does not parse: the kind of
//! error and where, never the text serde_json would quote. Resources are secrets (registry
//! credentials, layer keys, signing keys) and a document of the wrong shape would otherwise put
//! its values into an error that reaches the caller and the log (`invalid type: string "..."`).

/// `e` as "syntax error at line 1 column 9", without any of the input.
pub fn redacted_json_error(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "a value of the wrong type or shape",
        serde_json::error::Category::Eof => "unexpected end of input",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn says_where_but_not_what() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Auth {
            auths: std::collections::BTreeMap<String, String>,
        }
        for (doc, kind) in [
            (r#"{"auths": "dXNlcjpwYXNzd29yZA=="}"#, "wrong type"),
            (
                r#"{"auths": {"h": 5}, "x": "dXNlcjpwYXNzd29yZA=="}"#,
                "wrong type",
            ),
            (r#"{"auths": "dXNlcjpwYXNzd29yZA=="#, "end of input"),
            (r#"dXNlcjpwYXNzd29yZA=="#, "syntax"),
        ] {
            let raw = serde_json::from_str::<Auth>(doc).unwrap_err();
            let said = redacted_json_error(&raw);
            assert!(said.contains(kind) && said.contains("line 1"), "{said}");
            assert!(!said.contains("dXNl") && !said.contains('5'), "{said}");
        }
    }
}

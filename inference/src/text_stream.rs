//! From generated token ids to the text deltas a client sees: incremental detokenization that
//! never splits a UTF-8 character (a byte-level token may end mid-character), and stop sequences
//! matched on the decoded text, with text that might begin a stop sequence held back until it is
//! known not to.

use tokenizers::Tokenizer;

use crate::error::InferenceError;

/// Decodes a growing list of token ids into text deltas (the windowed scheme of TGI/vLLM:
/// decode a few tokens of context before the new ones, emit only what changed).
pub(crate) struct IncrementalDecoder<'t> {
    tokenizer: &'t Tokenizer,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl<'t> IncrementalDecoder<'t> {
    pub(crate) fn new(tokenizer: &'t Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    fn decode(&self, from: usize, to: usize) -> Result<String, InferenceError> {
        let ids = self.ids.get(from..to).unwrap_or_default();
        self.tokenizer
            .decode(ids, true)
            .map_err(InferenceError::tokenizer)
    }

    /// Adds a token; returns the new text once it forms complete characters.
    pub(crate) fn push(&mut self, id: u32) -> Result<String, InferenceError> {
        self.ids.push(id);
        let before = self.decode(self.prefix_offset, self.read_offset)?;
        let now = self.decode(self.prefix_offset, self.ids.len())?;
        if now.len() <= before.len() || now.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        // Decoders are prefix-stable in practice; if one is not, emit from the same byte offset
        // when it is a character boundary, else wait for more tokens.
        let delta = match now.strip_prefix(before.as_str()) {
            Some(d) => d.to_owned(),
            None => match now.get(before.len()..) {
                Some(d) => d.to_owned(),
                None => return Ok(String::new()),
            },
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(delta)
    }

    /// Whatever is still pending at the end of generation (an incomplete character decodes as
    /// U+FFFD, as every detokenizer does).
    pub(crate) fn finish(&mut self) -> Result<String, InferenceError> {
        let before = self.decode(self.prefix_offset, self.read_offset)?;
        let now = self.decode(self.prefix_offset, self.ids.len())?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(match now.strip_prefix(before.as_str()) {
            Some(d) => d.to_owned(),
            None => now.get(before.len()..).unwrap_or_default().to_owned(),
        })
    }
}

/// Stop-sequence matching on text; the stop sequence itself is not part of the output.
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released.
    pending: String,
}

/// What [`StopMatcher::push`] decided.
pub(crate) struct StopOutcome {
    /// Text that is safe to send to the client now.
    pub text: String,
    /// A stop sequence was found; generation ends.
    pub stopped: bool,
}

impl StopMatcher {
    pub(crate) fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    pub(crate) fn push(&mut self, delta: &str) -> StopOutcome {
        self.pending.push_str(delta);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            let text = self.pending.get(..at).unwrap_or_default().to_owned();
            self.pending.clear();
            return StopOutcome {
                text,
                stopped: true,
            };
        }
        let hold = self.held_back_len();
        let release = self.pending.len() - hold;
        let rest = self.pending.split_off(release);
        let text = std::mem::replace(&mut self.pending, rest);
        StopOutcome {
            text,
            stopped: false,
        }
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of a stop sequence,
    /// on a character boundary.
    fn held_back_len(&self) -> usize {
        let p = &self.pending;
        self.stops
            .iter()
            .flat_map(|s| {
                (1..s.len().min(p.len() + 1))
                    .filter(|k| s.is_char_boundary(*k) && p.is_char_boundary(p.len() - k))
                    .filter(|k| p.ends_with(&s[..*k]))
            })
            .max()
            .unwrap_or(0)
    }

    /// Releases held-back text when generation ends for another reason.
    pub(crate) fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for d in deltas {
            let o = m.push(d);
            out.push_str(&o.text);
            if o.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_across_deltas_is_removed_with_what_follows() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D and more"]),
            ("hello ".into(), true)
        );
    }

    #[test]
    fn partial_match_is_released_when_it_fails() {
        assert_eq!(run(&["END"], &["a E", "Nx", "y"]), ("a ENxy".into(), false));
        assert_eq!(run(&["END"], &["tail EN"]), ("tail EN".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["bb", "a"], &["xbba"]), ("x".into(), true));
    }

    #[test]
    fn multibyte_stop_and_text() {
        assert_eq!(run(&["é!"], &["caf", "é", "!", "x"]), ("caf".into(), true));
        assert_eq!(run(&["éa"], &["ééb"]), ("ééb".into(), false));
    }

    #[test]
    fn held_back_text_is_not_released_early() {
        let mut m = StopMatcher::new(vec!["\n\nUser:".into()]);
        assert_eq!(m.push("answer\n").text, "answer");
        assert_eq!(m.push("\nUs").text, "");
        let o = m.push("er:");
        assert!(o.stopped);
        assert_eq!(o.text, "");
    }
}

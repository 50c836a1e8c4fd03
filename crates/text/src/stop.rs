//! Stop strings over streamed text.
//!
//! [`StopMatcher`] sits after the detokenizer: it receives text as it is generated, in pieces
//! that may split a stop string anywhere, and passes on only the text that is certain to come
//! before every stop string (the semantics of vLLM's and OpenAI's `stop`):
//!
//! - stop strings are matched in the concatenation of all pieces, so one may span several;
//! - the stop string and everything after it are never returned;
//! - a tail that could still be the beginning of a stop string is held back (never more than
//!   the longest stop string's length less one byte, and always cut on a character boundary) and
//!   released once it can no longer start one;
//! - the first complete match ends the stream: when several stop strings match, the one that
//!   starts earliest wins (on a tie, the first in the list); a longer stop string that starts
//!   even earlier but is still incomplete is not waited for, as in vLLM;
//! - after a stop every push returns nothing;
//! - empty stop strings are ignored.

/// What one [`StopMatcher::push`] releases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopOutput {
    /// Text that is safe to emit now (it can no longer be part of a stop string).
    pub text: String,
    /// The index, in the list given to [`StopMatcher::new`], of the stop string that matched;
    /// generation should end.
    pub stopped: Option<usize>,
}

/// Finds stop strings in streamed text; see the module docs.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    /// The stop strings, as given (empty ones never match).
    stops: Vec<String>,
    /// Text received but not yet released: a possible beginning of a stop string.
    held: String,
    /// The longest stop string, in bytes.
    max_stop_len: usize,
    /// The stop string that matched, once one has.
    stopped: Option<usize>,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings among them are ignored (their indices still count).
    pub fn new(stops: Vec<String>) -> Self {
        let max_stop_len = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            stops,
            held: String::new(),
            max_stop_len,
            stopped: None,
        }
    }

    /// Whether no (non-empty) stop string is set, so that text passes straight through.
    pub fn is_empty(&self) -> bool {
        self.max_stop_len == 0
    }

    /// The index of the stop string that matched, if one has.
    pub fn stopped(&self) -> Option<usize> {
        self.stopped
    }

    /// Adds the next piece of text; returns the text that can be emitted now and whether a stop
    /// string matched.
    pub fn push(&mut self, text: &str) -> StopOutput {
        if self.stopped.is_some() {
            return StopOutput::default();
        }
        if self.is_empty() {
            return StopOutput {
                text: text.to_owned(),
                stopped: None,
            };
        }
        self.held.push_str(text);
        if let Some((at, index)) = self.earliest_match() {
            self.held.truncate(at);
            self.stopped = Some(index);
            return StopOutput {
                text: std::mem::take(&mut self.held),
                stopped: Some(index),
            };
        }
        let keep = self.possible_start();
        let rest = self.held.split_off(keep);
        StopOutput {
            text: std::mem::replace(&mut self.held, rest),
            stopped: None,
        }
    }

    /// The text still held back at the end of generation (none after a stop).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// The byte offset and index of the complete stop string that starts earliest in `held`.
    fn earliest_match(&self) -> Option<(usize, usize)> {
        self.stops
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .filter_map(|(i, s)| self.held.find(s.as_str()).map(|at| (at, i)))
            .min()
    }

    /// Where the longest tail of `held` that is a proper beginning of some stop string starts,
    /// or `held.len()` when there is none. Only called when no stop string matches in `held`.
    fn possible_start(&self) -> usize {
        let len = self.held.len();
        let bytes = self.held.as_bytes();
        let first = len.saturating_sub(self.max_stop_len.saturating_sub(1));
        (first..len)
            .filter(|&at| self.held.is_char_boundary(at))
            .find(|&at| {
                let tail = &bytes[at..];
                self.stops
                    .iter()
                    .any(|s| s.len() > tail.len() && s.as_bytes().starts_with(tail))
            })
            .unwrap_or(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(stops.iter().map(|s| (*s).to_owned()).collect())
    }

    /// Pushes every piece; returns everything emitted (with `finish` when nothing stopped) and
    /// the stop index.
    fn run(m: &mut StopMatcher, pieces: &[&str]) -> (String, Option<usize>) {
        let mut out = String::new();
        let mut stopped = None;
        for piece in pieces {
            let o = m.push(piece);
            out.push_str(&o.text);
            if o.stopped.is_some() {
                assert!(stopped.is_none(), "stopped twice");
                stopped = o.stopped;
            }
        }
        out.push_str(&m.finish());
        (out, stopped)
    }

    #[test]
    fn stop_inside_one_chunk() {
        let mut m = matcher(&["STOP"]);
        let o = m.push("hello STOP world");
        assert_eq!(
            o,
            StopOutput {
                text: "hello ".into(),
                stopped: Some(0)
            }
        );
        assert_eq!(m.stopped(), Some(0));
        assert_eq!(m.push("more"), StopOutput::default());
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn stop_spanning_chunks() {
        let mut m = matcher(&["<|end|>"]);
        assert_eq!(m.push("abc<").text, "abc");
        assert_eq!(m.push("|e").text, "");
        let o = m.push("nd");
        assert_eq!((o.text.as_str(), o.stopped), ("", None));
        let o = m.push("|>tail");
        assert_eq!((o.text.as_str(), o.stopped), ("", Some(0)));
        assert_eq!(m.push("x"), StopOutput::default());
        assert_eq!(m.finish(), "");

        let mut m = matcher(&["<|end|>"]);
        let pieces: Vec<String> = "one two<|end|>three".chars().map(String::from).collect();
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        assert_eq!(run(&mut m, &refs), ("one two".into(), Some(0)));
    }

    #[test]
    fn partial_prefix_is_released_when_it_cannot_match() {
        let mut m = matcher(&["\n\nUser:"]);
        assert_eq!(m.push("Hi\n").text, "Hi");
        assert_eq!(m.push("\nUs").text, "");
        // "\n\nUse" then "d" — not the stop string: all of it is released.
        let o = m.push("ed");
        assert_eq!((o.text.as_str(), o.stopped), ("\n\nUsed", None));
        // A held tail that is released only at the end.
        assert_eq!(m.push(" it\n").text, " it");
        assert_eq!(m.finish(), "\n");
        // The held tail shifts to a later possible start.
        let mut m = matcher(&["abab"]);
        assert_eq!(m.push("aba").text, "");
        assert_eq!(m.push("c").text, "abac");
        let mut m = matcher(&["abab"]);
        assert_eq!(m.push("aba").text, "");
        // "ababa" holds "ab" match start at 0 → "abab" matches.
        let o = m.push("ba");
        assert_eq!((o.text.as_str(), o.stopped), ("", Some(0)));
        let mut m = matcher(&["abc"]);
        assert_eq!(m.push("aab").text, "a");
        assert_eq!(m.push("ab").text, "ab");
        assert_eq!(run(&mut m, &["c!"]), (String::new(), Some(0)));
    }

    #[test]
    fn holds_back_at_most_the_longest_stop_less_one_byte() {
        let mut m = matcher(&["xy", "hello"]);
        let o = m.push("say hell");
        assert_eq!(o.text, "say ");
        assert_eq!(m.push("no").text, "hellno");
        let mut m = matcher(&["aaaa"]);
        assert_eq!(m.push("aaaaaaa").stopped, Some(0));
        let mut m = matcher(&["aaaa"]);
        assert_eq!(m.push("baaa").text, "b");
        assert_eq!(m.held.len(), 3);
    }

    #[test]
    fn multi_byte_characters_around_a_stop() {
        // A stop made of multi-byte characters, split between pushes.
        let mut m = matcher(&["東京"]);
        assert_eq!(m.push("café 東").text, "café ");
        let o = m.push("京🙂");
        assert_eq!((o.text.as_str(), o.stopped), ("", Some(0)));

        // A stop whose first byte is shared with a different character: the held tail must be
        // cut on a character boundary and released whole.
        let mut m = matcher(&["é!"]);
        assert_eq!(m.push("naïve é").text, "naïve ");
        assert_eq!(m.push("è").text, "éè");
        assert_eq!(m.push("é").text, "");
        let o = m.push("!x");
        assert_eq!((o.text.as_str(), o.stopped), ("", Some(0)));

        // A long ASCII stop after multi-byte text: the hold window starts inside a character.
        let mut m = matcher(&["STOPPING"]);
        let o = m.push("🙂🙂 STOP");
        assert_eq!(o.text, "🙂🙂 ");
        assert_eq!(run(&mut m, &["PED 🚀"]), ("STOPPED 🚀".into(), None));

        // Multi-byte text right before and after the stop.
        let mut m = matcher(&["<end>"]);
        assert_eq!(
            run(&mut m, &["Zürich<e", "nd>Москва"]),
            ("Zürich".into(), Some(0))
        );
    }

    #[test]
    fn earliest_of_several_stop_strings_wins() {
        let mut m = matcher(&["world", "lo"]);
        let o = m.push("hello world");
        assert_eq!((o.text.as_str(), o.stopped), ("hel", Some(1)));

        let mut m = matcher(&["c", "ab"]);
        let o = m.push("xabc");
        assert_eq!((o.text.as_str(), o.stopped), ("x", Some(1)));

        // Ties go to the first in the list.
        let mut m = matcher(&["abc", "ab"]);
        let o = m.push("zabcd");
        assert_eq!((o.text.as_str(), o.stopped), ("z", Some(0)));

        // Across pushes, with the later-listed stop string completing first.
        let mut m = matcher(&["END", "\n\n"]);
        assert_eq!(m.push("a\n").text, "a");
        let o = m.push("\nEND");
        assert_eq!((o.text.as_str(), o.stopped), ("", Some(1)));
    }

    #[test]
    fn finish_releases_held_text() {
        let mut m = matcher(&["</answer>"]);
        assert_eq!(m.push("42 </ans").text, "42 ");
        assert_eq!(m.finish(), "</ans");
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn empty_stop_strings_are_ignored() {
        let mut m = matcher(&[]);
        assert!(m.is_empty());
        assert_eq!(m.push("anything").text, "anything");
        let mut m = matcher(&["", ""]);
        assert!(m.is_empty());
        assert_eq!(run(&mut m, &["a", "b"]), ("ab".into(), None));
        // Indices still refer to the list as given.
        let mut m = matcher(&["", "b"]);
        assert_eq!(run(&mut m, &["a", "bc"]), ("a".into(), Some(1)));
    }

    #[test]
    fn every_split_of_a_text_gives_the_same_result() {
        let stops = ["東京", "e!", "abab", "🙂🚀"];
        let texts = [
            "hello 東 京 then 東京 more",
            "say e? then e!",
            "aba abab",
            "🙂 🚀 🙂🚀",
            "nothing to see é here",
        ];
        for text in texts {
            let mut whole = matcher(&stops);
            let expected = run(&mut whole, &[text]);
            let bounds: Vec<usize> = (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .collect();
            for &a in &bounds {
                for &b in bounds.iter().filter(|&&b| b >= a) {
                    let mut m = matcher(&stops);
                    let got = run(&mut m, &[&text[..a], &text[a..b], &text[b..]]);
                    assert_eq!(got, expected, "{text:?} split at {a}, {b}");
                }
            }
        }
    }
}

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
//!   even earlier but is still incomplete is not waited for, as in vLLM. "Several" means all
//!   the matches completed by the same [`StopMatcher::push`]: the push in which the first match
//!   completes decides, and among the matches that end within it the earliest start wins;
//! - after a stop every push returns nothing;
//! - empty stop strings are ignored (their indices still count).
//!
//! # How matching works, and what it costs
//!
//! The stop strings are compiled once, in [`StopMatcher::new`], into an Aho–Corasick automaton
//! (the `aho-corasick` crate's contiguous NFA, with standard, overlapping match semantics).
//! The matcher keeps the automaton's state across pushes and steps it one byte at a time
//! through the new text only. The crate does not expose a state's depth (the length of the
//! longest suffix of the text so far that begins some stop string), so beside the automaton
//! the matcher keeps a table, built by walking every stop string through it, that gives each
//! state its depth and, for match states, the best stop string ending there (the longest, so
//! the earliest-starting; on a tie the first listed). So:
//!
//! - a match's start is its end less its length, with no search back through the text;
//! - the held tail is exactly the current state's depth: it is the one suffix that could still
//!   begin a stop string. It always starts on a character boundary, since a stop string begins
//!   with the first byte of a character (the cut is still made on a boundary, defensively);
//! - once a match is found, stepping ends as soon as the depth shows that no later match can
//!   start at or before it.
//!
//! A push therefore costs time linear in its own text (amortised: failure transitions and the
//! held buffer's compaction are paid for by earlier bytes), whatever the number or length of
//! the stop strings. Construction costs time, and memory, linear in the stop strings' total
//! length (plus, as for any overlapping Aho–Corasick automaton, the matches it records per
//! state — one per state unless stop strings end with one another).
//!
//! The compiled automaton is shared (`Arc`) by clones of a matcher: a request's choices each
//! clone one matcher, so its stop strings are compiled and held once whatever `n` is.
//!
//! The depths sit in an array indexed by state ID, which for the contiguous NFA is an offset
//! into its own array of `u32`s, so the table is no larger than the automaton (each takes about
//! 12 bytes per stop-string byte when the stop strings share no prefixes, less when they do).
//!
//! Should the automaton or its table fail to build (the crate limits it to about 2^31 `u32`s,
//! gigabytes of stop strings; the table refuses a state ID past the automaton's size), the
//! matcher falls back to searching the held text for every stop string on each push: the same
//! results, at a cost of the number of stop strings times their length per push.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::nfa::contiguous::NFA;
use aho_corasick::{Anchored, MatchKind, PatternID};

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
    /// How stop strings are found; `None` when no non-empty stop string is set.
    engine: Option<Engine>,
    /// Text received but not yet released: a possible beginning of a stop string.
    held: Held,
    /// The stop string that matched, once one has.
    stopped: Option<usize>,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings among them are ignored (their indices still count).
    pub fn new(stops: Vec<String>) -> Self {
        Self::with_engine(Engine::new(stops))
    }

    /// A matcher that finds stop strings with `engine` (`None`: no stop strings).
    fn with_engine(engine: Option<Engine>) -> Self {
        Self {
            engine,
            held: Held::default(),
            stopped: None,
        }
    }

    /// Whether no (non-empty) stop string is set, so that text passes straight through.
    pub fn is_empty(&self) -> bool {
        self.engine.is_none()
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
        let Some(engine) = &mut self.engine else {
            return StopOutput {
                text: text.to_owned(),
                stopped: None,
            };
        };
        self.held.push_str(text);
        match engine.scan(self.held.as_str(), text.len()) {
            Scan::Stop { at, index } => {
                let text = self
                    .held
                    .release(floor_char_boundary(self.held.as_str(), at));
                self.held.clear();
                self.stopped = Some(index);
                StopOutput {
                    text,
                    stopped: Some(index),
                }
            }
            Scan::Hold(len) => {
                let held = self.held.as_str();
                let at = floor_char_boundary(held, held.len().saturating_sub(len));
                StopOutput {
                    text: self.held.release(at),
                    stopped: None,
                }
            }
        }
    }

    /// The text still held back at the end of generation (none after a stop).
    pub fn finish(&mut self) -> String {
        let len = self.held.as_str().len();
        let text = self.held.release(len);
        self.held.clear();
        text
    }

    /// The text held back now.
    #[cfg(test)]
    fn held(&self) -> &str {
        self.held.as_str()
    }
}

/// The largest character boundary of `text` at or before `at` (the end, past it).
fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The held text: the tail of a buffer whose released front is dropped only once it is at
/// least as long as what is still held, so that releasing costs time linear in the text
/// released rather than in the text kept.
#[derive(Debug, Clone, Default)]
struct Held {
    /// Released text (up to `start`), then the held text.
    buf: String,
    /// Where the held text starts in `buf` (always a character boundary).
    start: usize,
}

impl Held {
    /// The held text.
    fn as_str(&self) -> &str {
        &self.buf[self.start..]
    }

    /// Appends `text` to the held text.
    fn push_str(&mut self, text: &str) {
        self.buf.push_str(text);
    }

    /// Removes and returns the first `len` bytes of the held text (`len` is on a character
    /// boundary of it).
    fn release(&mut self, len: usize) -> String {
        let end = self.start + len;
        let text = self.buf[self.start..end].to_owned();
        self.start = end;
        if self.start >= self.buf.len() - self.start {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        text
    }

    /// Drops the held text.
    fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }
}

/// What a scan of the held text after a push found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// A stop string matched: the one at `index` in the list, starting `at` bytes into the held
    /// text.
    Stop { at: usize, index: usize },
    /// No stop string matched; the last this many bytes of the held text could still begin one.
    Hold(usize),
}

/// How a [`StopMatcher`] finds its stop strings.
#[derive(Debug, Clone)]
enum Engine {
    /// Stepping an automaton through the new text (see the module docs).
    Automaton(Box<StopAutomaton>),
    /// Searching the held text for every stop string; for when the automaton cannot be built.
    Naive(NaiveScan),
}

impl Engine {
    /// The engine for `stops`, or `None` when every stop string is empty.
    fn new(stops: Vec<String>) -> Option<Self> {
        if stops.iter().all(String::is_empty) {
            return None;
        }
        Some(match StopAutomaton::new(&stops) {
            Some(automaton) => Self::Automaton(Box::new(automaton)),
            None => Self::Naive(NaiveScan::new(stops)),
        })
    }

    /// Scans `held`, the held text whose last `new` bytes were just pushed.
    fn scan(&mut self, held: &str, new: usize) -> Scan {
        match self {
            Self::Automaton(automaton) => automaton.scan(held, new),
            Self::Naive(naive) => naive.scan(held),
        }
    }
}

/// What the automaton's states stand for: their depth, and the best stop string ending in each
/// match state.
#[derive(Debug, Clone, Default)]
struct StateTable {
    /// The depth of each reachable state, at its ID's index ([`StateTable::UNREACHED`] for
    /// other indices). The contiguous NFA's state IDs are offsets into its array of `u32`s, so
    /// this is no longer than that array; [`StateTable::new`] refuses an ID past it.
    depths: Vec<u32>,
    /// The best stop string ending in each reachable match state: the longest (so the
    /// earliest-starting); on a tie, the first listed.
    best: HashMap<StateID, PatternID>,
}

impl StateTable {
    /// In `depths`, an index that is no reachable state.
    const UNREACHED: u32 = u32::MAX;

    /// The table of every state of `nfa` reachable from `start`: those that the `patterns`
    /// pass through. `None` if a state ID or depth does not fit the table.
    fn new(nfa: &NFA, start: StateID, patterns: &[&str]) -> Option<Self> {
        let limit = nfa.memory_usage() / size_of::<u32>();
        let mut table = Self::default();
        table.insert(nfa, start, 0, limit)?;
        for pattern in patterns {
            let mut state = start;
            for (depth, &byte) in (1..).zip(pattern.as_bytes()) {
                state = nfa.next_state(Anchored::No, state, byte);
                table.insert(nfa, state, depth, limit)?;
            }
        }
        Some(table)
    }

    /// Records `state`, at `depth`, unless it already is; `None` if its ID's index is not
    /// below `limit` or its depth does not fit.
    fn insert(&mut self, nfa: &NFA, state: StateID, depth: usize, limit: usize) -> Option<()> {
        let at = state.as_usize();
        if at >= limit {
            return None;
        }
        if at >= self.depths.len() {
            self.depths.resize(at + 1, Self::UNREACHED);
        }
        if self.depths[at] == Self::UNREACHED {
            self.depths[at] = u32::try_from(depth)
                .ok()
                .filter(|&depth| depth != Self::UNREACHED)?;
            if let Some(best) = best_match(nfa, state) {
                self.best.insert(state, best);
            }
        }
        Some(())
    }

    /// The depth of `state`: the length of the longest suffix of the text so far that begins a
    /// stop string. (Every reachable state is in the table; were one not, this would be
    /// `usize::MAX`: everything would be held.)
    fn depth(&self, state: StateID) -> usize {
        match self.depths.get(state.as_usize()) {
            Some(&depth) if depth != Self::UNREACHED => depth as usize,
            _ => usize::MAX,
        }
    }

    /// The best stop string ending in `state`, if any.
    fn best(&self, state: StateID) -> Option<PatternID> {
        self.best.get(&state).copied()
    }
}

/// Stop strings as an Aho–Corasick automaton stepped across pushes; see the module docs.
#[derive(Clone)]
struct StopAutomaton {
    /// The compiled stop strings, shared by every clone (every choice of a request).
    compiled: Arc<Compiled>,
    /// The state after the text pushed so far.
    state: StateID,
}

/// The stop strings compiled: read-only, so clones of a matcher share it.
struct Compiled {
    /// The non-empty stop strings, as patterns in their order in the list.
    nfa: NFA,
    /// The index in the list given to [`StopMatcher::new`] of each pattern.
    indices: Vec<usize>,
    /// Every state the automaton can reach, with its depth and best match.
    states: StateTable,
}

impl fmt::Debug for StopAutomaton {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopAutomaton")
            .field("patterns", &self.compiled.indices.len())
            .field("match_states", &self.compiled.states.best.len())
            .field("nfa_bytes", &self.compiled.nfa.memory_usage())
            .field("depth", &self.depth())
            .finish_non_exhaustive()
    }
}

impl StopAutomaton {
    /// The automaton for the non-empty strings of `stops`, or `None` if it cannot be built
    /// (too large).
    fn new(stops: &[String]) -> Option<Self> {
        let (indices, patterns): (Vec<usize>, Vec<&str>) = stops
            .iter()
            .enumerate()
            .filter(|(_, stop)| !stop.is_empty())
            .map(|(index, stop)| (index, stop.as_str()))
            .unzip();
        let nfa = NFA::builder()
            .match_kind(MatchKind::Standard)
            .prefilter(false)
            .build(&patterns)
            .ok()?;
        let state = nfa.start_state(Anchored::No).ok()?;
        let states = StateTable::new(&nfa, state, &patterns)?;
        Some(Self {
            compiled: Arc::new(Compiled {
                nfa,
                indices,
                states,
            }),
            state,
        })
    }

    /// Steps through the last `new` bytes of `held`: the earliest-starting match among those
    /// that end there, or how much of `held` to keep.
    fn scan(&mut self, held: &str, new: usize) -> Scan {
        let base = held.len() - new;
        let mut best: Option<(usize, usize)> = None;
        for (end, &byte) in (base + 1..).zip(&held.as_bytes()[base..]) {
            self.state = self.compiled.nfa.next_state(Anchored::No, self.state, byte);
            if let Some(found) = self.match_ending_at(end) {
                best = Some(best.map_or(found, |best| best.min(found)));
            }
            // Any later match starts at or after `end - depth`.
            if let Some((at, _)) = best
                && end.saturating_sub(self.depth()) > at
            {
                break;
            }
        }
        match best {
            Some((at, index)) => Scan::Stop { at, index },
            None => Scan::Hold(self.depth()),
        }
    }

    /// The start and list index of the best stop string that ends at `end` in the current
    /// state, if one does.
    fn match_ending_at(&self, end: usize) -> Option<(usize, usize)> {
        let c = &self.compiled;
        if !c.nfa.is_match(self.state) {
            return None;
        }
        let pattern = c.states.best(self.state)?;
        let index = *c.indices.get(pattern.as_usize())?;
        Some((end.saturating_sub(c.nfa.pattern_len(pattern)), index))
    }

    /// The current state's depth: how much of the text pushed so far could still begin a stop
    /// string.
    fn depth(&self) -> usize {
        self.compiled.states.depth(self.state)
    }
}

/// The longest pattern that ends in `state` (on a tie, the first), if any.
fn best_match(nfa: &NFA, state: StateID) -> Option<PatternID> {
    if !nfa.is_match(state) {
        return None;
    }
    (0..nfa.match_len(state))
        .map(|i| nfa.match_pattern(state, i))
        .min_by_key(|&pattern| (Reverse(nfa.pattern_len(pattern)), pattern))
}

/// Stop strings found by searching the whole held text for each, on every push.
#[derive(Debug, Clone)]
struct NaiveScan {
    /// The stop strings, as given (empty ones never match); shared by clones.
    stops: Arc<[String]>,
    /// The longest stop string, in bytes.
    max_stop_len: usize,
}

impl NaiveScan {
    /// The search for `stops`.
    fn new(stops: Vec<String>) -> Self {
        let max_stop_len = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            stops: stops.into(),
            max_stop_len,
        }
    }

    /// The earliest-starting match in `held`, or how much of it to keep.
    fn scan(&self, held: &str) -> Scan {
        match self.earliest_match(held) {
            Some((at, index)) => Scan::Stop { at, index },
            None => Scan::Hold(held.len() - self.possible_start(held)),
        }
    }

    /// The byte offset and index of the complete stop string that starts earliest in `held`.
    fn earliest_match(&self, held: &str) -> Option<(usize, usize)> {
        self.stops
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .filter_map(|(i, s)| held.find(s.as_str()).map(|at| (at, i)))
            .min()
    }

    /// Where the longest tail of `held` that is a proper beginning of some stop string starts,
    /// or `held.len()` when there is none. Only called when no stop string matches in `held`.
    fn possible_start(&self, held: &str) -> usize {
        let len = held.len();
        let bytes = held.as_bytes();
        let first = len.saturating_sub(self.max_stop_len.saturating_sub(1));
        (first..len)
            .filter(|&at| held.is_char_boundary(at))
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
        assert_eq!(m.held().len(), 3);
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

    /// A small deterministic generator (SplitMix64), so that failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// A number below `n` (`n` > 0).
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// Up to `max_chars` characters drawn from `alphabet`.
        fn text(&mut self, alphabet: &[char], max_chars: usize) -> String {
            let len = self.below(max_chars + 1);
            (0..len)
                .map(|_| alphabet[self.below(alphabet.len())])
                .collect()
        }
    }

    /// The semantics of the module docs, computed on the whole text: the push in which the
    /// first match (by end) completes decides, and among all matches ending by the end of that
    /// push the earliest start wins (on a tie, the first listed).
    fn reference(stops: &[String], pieces: &[String]) -> (String, Option<usize>) {
        let text = pieces.concat();
        let bytes = text.as_bytes();
        let matches: Vec<(usize, usize, usize)> = stops
            .iter()
            .enumerate()
            .filter(|(_, stop)| !stop.is_empty())
            .flat_map(|(index, stop)| {
                (0..bytes.len())
                    .filter(|&at| bytes[at..].starts_with(stop.as_bytes()))
                    .map(move |at| (at, at + stop.len(), index))
            })
            .collect();
        let Some(first_end) = matches.iter().map(|&(_, end, _)| end).min() else {
            return (text, None);
        };
        let push_end = pieces
            .iter()
            .scan(0, |end, piece| {
                *end += piece.len();
                Some(*end)
            })
            .find(|&end| end >= first_end)
            .unwrap_or(text.len());
        let (at, index) = matches
            .iter()
            .filter(|&&(_, end, _)| end <= push_end)
            .map(|&(at, _, index)| (at, index))
            .min()
            .unwrap_or((text.len(), usize::MAX));
        (text[..at].to_owned(), Some(index))
    }

    /// Like [`run`], also checking after every push that what is held is a proper beginning
    /// of a stop string (or nothing).
    fn run_checked(
        m: &mut StopMatcher,
        stops: &[String],
        pieces: &[String],
    ) -> (String, Option<usize>) {
        let mut out = String::new();
        let mut stopped = None;
        for piece in pieces {
            let o = m.push(piece);
            out.push_str(&o.text);
            if o.stopped.is_some() {
                assert!(stopped.is_none(), "stopped twice");
                stopped = o.stopped;
            }
            let held = m.held();
            assert!(
                held.is_empty()
                    || stops
                        .iter()
                        .any(|s| s.len() > held.len() && s.starts_with(held)),
                "held {held:?} begins no stop string in {stops:?}"
            );
        }
        out.push_str(&m.finish());
        (out, stopped)
    }

    #[test]
    fn random_texts_stops_and_splits_match_the_reference() {
        let alphabets: [&[char]; 4] = [
            &['a', 'b'],
            &['a', 'b', 'c'],
            &['a', 'é', 'è', '🙂'],
            &['x', '\n', '東', '京', 'é'],
        ];
        let mut rng = Rng(0x5eed);
        for case in 0..20_000 {
            let alphabet = alphabets[rng.below(alphabets.len())];
            let stops: Vec<String> = (0..1 + rng.below(4))
                .map(|_| rng.text(alphabet, 4))
                .collect();
            let text = rng.text(alphabet, 24);
            let mut bounds: Vec<usize> = (0..rng.below(6))
                .map(|_| floor_char_boundary(&text, rng.below(text.len() + 1)))
                .collect();
            bounds.push(0);
            bounds.push(text.len());
            bounds.sort_unstable();
            let pieces: Vec<String> = bounds
                .windows(2)
                .map(|w| text[w[0]..w[1]].to_owned())
                .collect();
            let expected = reference(&stops, &pieces);
            let mut m = StopMatcher::new(stops.clone());
            let got = run_checked(&mut m, &stops, &pieces);
            assert_eq!(got, expected, "case {case}: {stops:?} over {pieces:?}");
            let naive = Engine::Naive(NaiveScan::new(stops.clone()));
            let mut m = StopMatcher::with_engine(Some(naive));
            let got = run_checked(&mut m, &stops, &pieces);
            assert_eq!(
                got, expected,
                "naive, case {case}: {stops:?} over {pieces:?}"
            );
        }
    }

    #[test]
    fn stop_strings_that_end_with_one_another() {
        // Match states that hold several stop strings: the longest (earliest) wins within a
        // push; across pushes the one completed first does.
        let mut m = matcher(&["a", "aa", "aaa", "baaa"]);
        assert_eq!(run(&mut m, &["xbaaa"]), ("x".into(), Some(3)));
        let mut m = matcher(&["a", "aa", "aaa", "baaa"]);
        assert_eq!(run(&mut m, &["xb", "aaa"]), ("x".into(), Some(3)));
        let mut m = matcher(&["a", "aa", "aaa", "baaa"]);
        assert_eq!(run(&mut m, &["xba", "aa"]), ("xb".into(), Some(0)));
        // Duplicates: the first listed.
        let mut m = matcher(&["", "ab", "b", "ab"]);
        assert_eq!(run(&mut m, &["cab"]), ("c".into(), Some(1)));
        // A later match is not waited for once no match can start earlier.
        let mut m = matcher(&["bc", "abcd"]);
        assert_eq!(run(&mut m, &["abc", "d"]), ("a".into(), Some(0)));
        let mut m = matcher(&["bc", "abcd"]);
        assert_eq!(run(&mut m, &["abcd"]), ("".into(), Some(1)));
    }

    #[test]
    fn many_long_stop_strings_and_many_pushes() {
        // 100 stop strings of 50 KB; a held tail that grows to 4 KB over 2,000 pushes. Linear
        // pushes make this quick; the former search made it minutes.
        let body = "ab".repeat(25_000);
        let stops: Vec<String> = (0..100).map(|i| format!("{i:02}|{body}")).collect();
        let mut m = StopMatcher::new(stops.clone());
        assert!(matches!(m.engine, Some(Engine::Automaton(_))), "{m:?}");
        assert_eq!(m.push("text 00|").text, "text ");
        for _ in 0..2_000 {
            assert_eq!(m.push("ab").text, "");
        }
        assert_eq!(m.held().len(), 3 + 4_000);
        let o = m.push("!");
        assert_eq!(o.text.len(), 3 + 4_000 + 1);
        assert_eq!(o.stopped, None);
        // Stop string 42, in pieces of 7 bytes.
        let stop = &stops[42];
        let mut out = String::new();
        let mut stopped = None;
        for at in (0..stop.len()).step_by(7) {
            let o = m.push(&stop[at..(at + 7).min(stop.len())]);
            out.push_str(&o.text);
            stopped = stopped.or(o.stopped);
        }
        assert_eq!((out.as_str(), stopped), ("", Some(42)));
    }
}

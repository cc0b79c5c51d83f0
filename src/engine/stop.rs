//! Stop strings over streamed text: emits what can no longer become part of a stop string,
//! holds back the rest, and cuts the output before the first stop string.
//!
//! "First" is the stop string that completes first in the text (earliest end; among those ending
//! at the same byte, the one starting earliest). Generation stops as soon as any stop string has
//! appeared, so the outcome never depends on how the text was split into deltas. This is the
//! earliest occurrence too, except when one stop string lies strictly inside another ("bc" in
//! "abcd"): then the inner one, which completes first, wins.
//!
//! Text pushed with `check == false` (the output before `min_tokens`, as vLLM does) cannot stop
//! the output: a stop string that ends inside it is plain text. One that starts inside it and
//! ends in checked text still stops, so such text is held back like any other.
//!
//! Invariant: `held` is the longest suffix of the text so far that is a proper prefix of some
//! stop string, so it is shorter than the longest stop string and starts at a char boundary;
//! everything before it was emitted.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopStatus {
    Continue,
    Stopped,
}

#[derive(Debug, Clone)]
pub struct StopMatcher {
    /// Non-empty stop strings.
    stops: Vec<String>,
    held: String,
    /// Index into `stops` once one matched.
    matched: Option<usize>,
    /// Whether the matched stop string is emitted (vLLM's `include_stop_str_in_output`).
    include: bool,
}

impl StopMatcher {
    /// Empty strings are ignored; with `include` a match emits the stop string too.
    pub fn new(stops: &[String], include: bool) -> Self {
        let stops = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        Self { stops, held: String::new(), matched: None, include }
    }

    /// Feeds newly decoded text; returns the text that is safe to emit now and whether a stop
    /// string completed. On a match only the text before the stop string (with `include`, up to
    /// its end) is emitted; after it
    /// every push returns ("", Stopped).
    pub fn push(&mut self, delta: &str) -> (String, StopStatus) {
        self.push_checked(delta, true)
    }

    /// As [`Self::push`], but with `check == false` no stop string may end inside `delta`
    /// (it is never `Stopped` then).
    pub fn push_checked(&mut self, delta: &str, check: bool) -> (String, StopStatus) {
        if self.matched.is_some() {
            return (String::new(), StopStatus::Stopped);
        }
        if self.stops.is_empty() {
            return (delta.to_owned(), StopStatus::Continue);
        }
        // Earlier text either held no stop string or was not to be checked, so only a match
        // that ends inside `delta` counts.
        let checked_from = self.held.len();
        self.held.push_str(delta);
        if let Some((start, index)) = check.then(|| self.first_match(checked_from)).flatten() {
            self.matched = Some(index);
            let mut emit = std::mem::take(&mut self.held);
            emit.truncate(if self.include { start + self.stops[index].len() } else { start });
            return (emit, StopStatus::Stopped);
        }
        let rest = self.held.split_off(self.partial_match_start());
        (std::mem::replace(&mut self.held, rest), StopStatus::Continue)
    }

    /// At the end of generation (length / EOS): the held-back text; empty after a match.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Which stop string matched, if any (for the API's `stop_reason`).
    pub fn matched(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }

    /// (start byte, stop index) of the stop string that completes first in `held` among those
    /// that end after byte `checked_from`.
    fn first_match(&self, checked_from: usize) -> Option<(usize, usize)> {
        self.stops
            .iter()
            .enumerate()
            .filter_map(|(i, stop)| {
                // A match starting before `from` would end at or before `checked_from`.
                let mut from = (checked_from + 1).saturating_sub(stop.len());
                while !self.held.is_char_boundary(from) {
                    from += 1;
                }
                self.held[from..].find(stop.as_str()).map(|at| (from + at + stop.len(), from + at, i))
            })
            .min()
            .map(|(_, start, i)| (start, i))
    }

    /// Where the longest suffix of `held` that could still grow into a stop string begins
    /// (`held.len()` if none). Proper prefixes only: a whole stop string at the end of unchecked
    /// text can no longer match.
    fn partial_match_start(&self) -> usize {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let held = self.held.as_bytes();
        let first = held.len().saturating_sub(longest.saturating_sub(1));
        (first..held.len())
            .filter(|&p| self.held.is_char_boundary(p))
            .find(|&p| self.stops.iter().any(|s| s.len() > held.len() - p && s.as_bytes().starts_with(&held[p..])))
            .unwrap_or(held.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>(), false)
    }

    /// Pushes every delta; returns what was emitted per push (plus the flush) and the last status.
    fn run(m: &mut StopMatcher, deltas: &[&str]) -> (Vec<String>, StopStatus) {
        let mut emitted = Vec::new();
        let mut status = StopStatus::Continue;
        for d in deltas {
            let (text, s) = m.push(d);
            emitted.push(text);
            status = s;
        }
        emitted.push(m.flush());
        (emitted, status)
    }

    #[test]
    fn a_stop_string_split_over_three_deltas() {
        let mut m = matcher(&["STOP"]);
        let (emitted, status) = run(&mut m, &["hello S", "T", "OP and more"]);
        assert_eq!(emitted, ["hello ", "", "", ""]);
        assert_eq!(status, StopStatus::Stopped);
        assert_eq!(m.matched(), Some("STOP"));
        assert_eq!(m.push("more"), (String::new(), StopStatus::Stopped));
    }

    #[test]
    fn a_false_prefix_is_released() {
        let mut m = matcher(&["STOP"]);
        assert_eq!(m.push("go ST"), ("go ".to_string(), StopStatus::Continue));
        assert_eq!(m.push("O"), (String::new(), StopStatus::Continue));
        assert_eq!(m.push("RM"), ("STORM".to_string(), StopStatus::Continue));
        // Self-overlap: "SSTOP" holds "S", releases it at the second "S", then matches.
        assert_eq!(m.push(" S"), (" ".to_string(), StopStatus::Continue));
        assert_eq!(m.push("S"), ("S".to_string(), StopStatus::Continue));
        assert_eq!(m.push("TOP!"), (String::new(), StopStatus::Stopped));
        assert_eq!(m.flush(), "");
        assert_eq!(m.matched(), Some("STOP"));
    }

    #[test]
    fn overlapping_stops_the_first_to_complete_wins() {
        for stops in [["abc", "bcd"], ["bcd", "abc"]] {
            let mut m = matcher(&stops);
            assert_eq!(run(&mut m, &["xa", "bcd"]).0, ["x", "", ""]);
            assert_eq!(m.matched(), Some("abc"));
        }
        // Same end: the one starting earlier.
        let mut m = matcher(&["cd", "bcd"]);
        assert_eq!(m.push("abcd"), ("a".to_string(), StopStatus::Stopped));
        assert_eq!(m.matched(), Some("bcd"));
        // Nested: "bc" completes before "abcd" could, in one delta or several.
        for deltas in [&["abcd"][..], &["a", "b", "c", "d"]] {
            let mut m = matcher(&["abcd", "bc"]);
            assert_eq!(run(&mut m, deltas).0.concat(), "a");
            assert_eq!(m.matched(), Some("bc"));
        }
    }

    #[test]
    fn a_stop_at_the_very_beginning() {
        let mut m = matcher(&["<|end|>"]);
        assert_eq!(m.push("<|end|>tail"), (String::new(), StopStatus::Stopped));
        assert_eq!(m.matched(), Some("<|end|>"));
    }

    #[test]
    fn unicode_stop_strings_never_split_a_char() {
        let mut m = matcher(&["終わり", "🛑"]);
        let (emitted, status) = run(&mut m, &["日本語の終", "わ", "り。続き"]);
        assert_eq!(emitted, ["日本語の", "", "", ""]);
        assert_eq!(status, StopStatus::Stopped);
        assert_eq!(m.matched(), Some("終わり"));
        // "é" shares its first byte with nothing in the stops; "🛑" and "🛒" share three bytes.
        let mut m = matcher(&["🛑"]);
        assert_eq!(m.push("café 🛒"), ("café 🛒".to_string(), StopStatus::Continue));
        assert_eq!(m.push("x🛑"), ("x".to_string(), StopStatus::Stopped));
    }

    #[test]
    fn include_emits_the_stop_string_and_nothing_after_it() {
        let mut m = StopMatcher::new(&["END".to_string(), "!".to_string()], true);
        assert_eq!(m.push("done E"), ("done ".to_string(), StopStatus::Continue));
        assert_eq!(m.push("NDx!"), ("END".to_string(), StopStatus::Stopped));
        assert_eq!(m.matched(), Some("END"));
        assert_eq!(m.push("more"), (String::new(), StopStatus::Stopped));
        let mut m = StopMatcher::new(&["é!".to_string()], true);
        assert_eq!(m.push("café!é"), ("café!".to_string(), StopStatus::Stopped));
    }

    #[test]
    fn unchecked_text_never_stops_but_a_stop_it_begins_still_can() {
        let mut m = matcher(&["!", "abcd"]);
        assert_eq!(m.push_checked("Hello!", false), ("Hello!".to_string(), StopStatus::Continue));
        assert_eq!(m.push_checked(" xab", false), (" x".to_string(), StopStatus::Continue));
        // "ab" was unchecked; "abcd" ends in checked text, so it stops.
        assert_eq!(m.push_checked("c", true), (String::new(), StopStatus::Continue));
        assert_eq!(m.push_checked("d!", true), (String::new(), StopStatus::Stopped));
        assert_eq!(m.matched(), Some("abcd"));
        // A stop wholly inside unchecked text is skipped; the next one in checked text counts,
        // even within the same held text.
        let mut m = matcher(&["ab", "abc"]);
        assert_eq!(m.push_checked("xab", false), ("x".to_string(), StopStatus::Continue));
        assert_eq!(m.push_checked("yab", true), ("aby".to_string(), StopStatus::Stopped));
        assert_eq!(m.matched(), Some("ab"));
        let mut m = matcher(&["é!"]);
        assert_eq!(m.push_checked("café!", false), ("café!".to_string(), StopStatus::Continue));
        assert_eq!(m.push_checked("é", true), (String::new(), StopStatus::Continue));
        assert_eq!(m.flush(), "é");
    }

    #[test]
    fn no_stops_passes_through() {
        for stops in [&[][..], &[""]] {
            let mut m = matcher(stops);
            assert_eq!(m.push("anything"), ("anything".to_string(), StopStatus::Continue));
            assert_eq!(m.flush(), "");
            assert_eq!(m.matched(), None);
        }
    }

    #[test]
    fn flush_returns_the_held_text() {
        let mut m = matcher(&["</answer>"]);
        assert_eq!(m.push("42 </ans"), ("42 ".to_string(), StopStatus::Continue));
        assert_eq!(m.flush(), "</ans");
        assert_eq!(m.matched(), None);
    }

    /// The text cut before the stop string that ends first (earliest start among equal ends),
    /// found by growing a prefix one char at a time.
    fn reference(text: &str, stops: &[&str]) -> (String, Option<String>) {
        let ends = text.char_indices().map(|(i, c)| i + c.len_utf8());
        for end in ends {
            let prefix = &text[..end];
            let longest = stops.iter().filter(|s| !s.is_empty() && prefix.ends_with(**s)).max_by_key(|s| s.len());
            if let Some(stop) = longest {
                return (prefix[..end - stop.len()].to_string(), Some(stop.to_string()));
            }
        }
        (text.to_string(), None)
    }

    #[test]
    fn any_splitting_emits_the_text_up_to_the_first_stop() {
        let cases: [(&str, &[&str]); 6] = [
            ("Hello world, the end. STOP here STOP", &["STOP", "end!", "world,x"]),
            ("aaaab aab", &["aab", "aaaaa"]),
            ("日本語のテキスト。終わり、そして続き", &["終わり", "テキストX", "。"]),
            ("wave 👋🏽 hi 👋🏽 bye", &["🏽 b", "👋🏾"]),
            ("no stop in this at all", &["STOP", "ll!", "ats"]),
            ("abcdabcd", &["abcd", "bc", "cda"]),
        ];
        let mut rng = StdRng::seed_from_u64(0);
        for (text, stops) in cases {
            let (expected, expected_stop) = reference(text, stops);
            let longest = stops.iter().map(|s| s.len()).max().unwrap();
            let boundaries: Vec<usize> = (1..text.len()).filter(|&i| text.is_char_boundary(i)).collect();
            for _ in 0..300 {
                let mut cuts: Vec<usize> = boundaries.iter().copied().filter(|_| rng.random_bool(0.4)).collect();
                cuts.insert(0, 0);
                cuts.push(text.len());
                let mut m = matcher(stops);
                let mut out = String::new();
                for w in cuts.windows(2) {
                    let (emitted, status) = m.push(&text[w[0]..w[1]]);
                    out.push_str(&emitted);
                    assert!(m.held.len() < longest, "held {:?}", m.held);
                    if status == StopStatus::Stopped {
                        break;
                    }
                }
                out.push_str(&m.flush());
                assert_eq!(out, expected, "{text:?} cut at {cuts:?}");
                assert_eq!(m.matched(), expected_stop.as_deref(), "{text:?} cut at {cuts:?}");
            }
        }
    }
}

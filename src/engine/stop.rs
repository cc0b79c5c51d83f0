//! Stop strings over streamed text: emits what can no longer become part of a stop string,
//! holds back the rest, and cuts the output before the first stop string.
//!
//! "First" is the stop string that completes first in the text (earliest end; among those ending
//! at the same byte, the one starting earliest). Generation stops as soon as any stop string has
//! appeared, so the outcome never depends on how the text was split into deltas. This is the
//! earliest occurrence too, except when one stop string lies strictly inside another ("bc" in
//! "abcd"): then the inner one, which completes first, wins.
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
}

impl StopMatcher {
    /// Empty strings are ignored.
    pub fn new(stops: &[String]) -> Self {
        let stops = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        Self { stops, held: String::new(), matched: None }
    }

    /// Feeds newly decoded text; returns the text that is safe to emit now and whether a stop
    /// string completed. On a match only the text before the stop string is emitted; after it
    /// every push returns ("", Stopped).
    pub fn push(&mut self, delta: &str) -> (String, StopStatus) {
        if self.matched.is_some() {
            return (String::new(), StopStatus::Stopped);
        }
        if self.stops.is_empty() {
            return (delta.to_owned(), StopStatus::Continue);
        }
        // Earlier text held no stop string, so any match ends inside `delta`.
        self.held.push_str(delta);
        if let Some((start, index)) = self.first_match() {
            self.matched = Some(index);
            let mut emit = std::mem::take(&mut self.held);
            emit.truncate(start);
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

    /// (start byte, stop index) of the stop string that completes first in `held`.
    fn first_match(&self) -> Option<(usize, usize)> {
        self.stops
            .iter()
            .enumerate()
            .filter_map(|(i, stop)| self.held.find(stop.as_str()).map(|start| (start + stop.len(), start, i)))
            .min()
            .map(|(_, start, i)| (start, i))
    }

    /// Where the longest suffix of `held` that could still grow into a stop string begins
    /// (`held.len()` if none).
    fn partial_match_start(&self) -> usize {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let held = self.held.as_bytes();
        let first = held.len().saturating_sub(longest.saturating_sub(1));
        (first..held.len())
            .filter(|&p| self.held.is_char_boundary(p))
            .find(|&p| self.stops.iter().any(|s| s.as_bytes().starts_with(&held[p..])))
            .unwrap_or(held.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>())
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

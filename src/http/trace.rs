//! W3C Trace Context (`traceparent`, version `00`): the gateway is one hop of a trace.
//! It keeps the caller's trace id and sampling flag, gives the upstream its own span id
//! as the parent, and starts a new trace when the caller sent none (or a malformed
//! one). `tracestate` travels on untouched with a valid `traceparent`, and is dropped
//! with an invalid one, as the specification asks.
//!
//! Whether a trace is sampled is decided once, here, by a [`Sampler`]: a continued
//! trace keeps its caller's decision (parent-based), a new one is sampled by its trace
//! id against `tracing.sample_ratio`. The `traceparent` sent upstream carries the
//! decision in its flags.

use std::cell::Cell;

use http::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The `sampled` bit of `trace-flags`.
const SAMPLED: u8 = 0x01;

/// Head sampling of the traces the gateway starts: a trace is sampled when the 56
/// random low bits of its id fall under `ratio × 2^56`, so every hop that samples by
/// the same ratio makes the same decision for the same trace.
///
/// ```
/// use scopegate::http::trace::Sampler;
/// let trace_id = [0x4b; 16];
/// assert!(Sampler::ratio(1.0).samples(&trace_id));
/// assert!(!Sampler::ratio(0.0).samples(&trace_id));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler {
    /// Trace ids whose low 56 bits are below this are sampled; `1 << 56`: all.
    threshold: u64,
}

impl Sampler {
    /// Samples every trace it starts: the gateway's behaviour without `tracing:`.
    pub const ALWAYS: Sampler = Sampler { threshold: 1 << 56 };

    /// Samples `ratio` (0.0 to 1.0, clamped) of the traces it starts.
    pub fn ratio(ratio: f64) -> Sampler {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        // Exact for 0.0 and 1.0; in between the rounding is below one part in 2^52.
        Sampler {
            threshold: (ratio * (1u64 << 56) as f64) as u64,
        }
    }

    /// The decision for a trace this hop starts.
    pub fn samples(&self, trace_id: &[u8; 16]) -> bool {
        let mut low = [0u8; 8];
        low[1..].copy_from_slice(&trace_id[9..]);
        u64::from_be_bytes(low) < self.threshold
    }
}

/// This hop's place in a trace: the `traceparent` the upstream receives.
#[derive(Debug, Clone)]
pub struct Trace {
    /// `00-<trace id>-<span id>-<flags>`: 55 bytes of lower-case hex and dashes.
    traceparent: HeaderValue,
    /// The caller sent a usable `traceparent` (else this hop started the trace).
    pub continued: bool,
    pub trace_id: [u8; 16],
    /// This hop's span id: the parent the upstream sees.
    pub span_id: [u8; 8],
    /// The caller's span id, when the trace is continued.
    pub parent_id: Option<[u8; 8]>,
    /// `trace-flags` as sent upstream.
    flags: u8,
}

impl Trace {
    /// Continues the trace `headers` carry, or starts one; a started trace is sampled.
    pub fn from_headers(headers: &HeaderMap) -> Trace {
        Trace::start(headers, &Sampler::ALWAYS)
    }

    /// Continues the trace `headers` carry with its sampling decision, or starts one
    /// that `sampler` decides on.
    pub fn start(headers: &HeaderMap, sampler: &Sampler) -> Trace {
        let mut span_id = [0u8; 8];
        random(&mut span_id);
        let parent = headers
            .get(&TRACEPARENT)
            .filter(|_| headers.get_all(&TRACEPARENT).iter().count() == 1)
            .and_then(|value| parse(value.as_bytes()));
        let (trace_id, parent_id, flags) = match parent {
            Some((trace_id, parent_id, flags)) => (trace_id, Some(parent_id), flags),
            None => {
                let mut trace_id = [0u8; 16];
                random(&mut trace_id);
                let flags = if sampler.samples(&trace_id) {
                    SAMPLED
                } else {
                    0
                };
                (trace_id, None, flags)
            }
        };
        let mut text = Vec::with_capacity(55);
        text.extend_from_slice(b"00-");
        hex(&trace_id, &mut text);
        text.push(b'-');
        hex(&span_id, &mut text);
        text.push(b'-');
        hex(&[flags], &mut text);
        Trace {
            // Only hex digits and dashes: always a valid header value.
            // `Bytes` from the `Vec`: the value keeps this buffer, no second copy.
            traceparent: HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
                .unwrap_or_else(|_| HeaderValue::from_static("")),
            continued: parent_id.is_some(),
            trace_id,
            span_id,
            parent_id,
            flags,
        }
    }

    /// The trace is sampled: this hop's span is recorded (and exported, when
    /// `tracing.otlp_endpoint` is set).
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The value sent upstream.
    pub fn traceparent(&self) -> &HeaderValue {
        &self.traceparent
    }

    /// The 32 hex digits of the trace id (for logs).
    pub fn trace_id(&self) -> &str {
        self.traceparent
            .to_str()
            .ok()
            .and_then(|text| text.get(3..35))
            .unwrap_or("")
    }

    /// Sets `traceparent` on the upstream's headers; drops a `tracestate` that came
    /// without a usable `traceparent`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if !self.continued {
            headers.remove(&TRACESTATE);
        }
        headers.insert(TRACEPARENT.clone(), self.traceparent.clone());
    }
}

/// The trace id, parent span id and flags of a `traceparent`, if it is well formed: version `00` is
/// exactly `00-<32 hex>-<16 hex>-<2 hex>`; a later version may append `-...` fields;
/// version `ff` and all-zero ids are invalid; hex is lower case.
fn parse(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if value.len() < 55 {
        return None;
    }
    let version = unhex::<1>(&value[0..2])?[0];
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    if value.len() > 55 && value[55] != b'-' {
        return None;
    }
    let trace_id = unhex::<16>(&value[3..35])?;
    let parent_id = unhex::<8>(&value[36..52])?;
    let flags = unhex::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some((trace_id, parent_id, flags))
}

fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Lower-case hex of `bytes`, appended to `out`.
pub fn hex(bytes: &[u8], out: &mut Vec<u8>) {
    for byte in bytes {
        out.push(b"0123456789abcdef"[usize::from(byte >> 4)]);
        out.push(b"0123456789abcdef"[usize::from(byte & 15)]);
    }
}

/// Fills `bytes` with ids: a per-thread SplitMix64 stream seeded once from the system
/// RNG (aws-lc). Trace and span ids must be unique and well spread (sampling reads
/// their low bits), not unguessable: they are sent in clear to every hop. Asking
/// aws-lc's DRBG for each id cost about 2,300 instructions (callgrind); this costs a few.
fn random(bytes: &mut [u8]) {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|state| {
        for chunk in bytes.chunks_mut(8) {
            let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            state.set(next);
            let mut z = next;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    });
    if bytes.iter().all(|&b| b == 0) {
        // W3C calls an all-zero id invalid.
        bytes[0] = 1;
    }
}

/// A thread's starting point: the system RNG, else the clock and the thread's id.
fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_ok() {
        return u64::from_le_bytes(bytes);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&std::thread::current().id(), &mut hasher);
    nanos ^ std::hash::Hasher::finish(&hasher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(TRACEPARENT.clone(), HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_parent_is_continued_with_a_new_span_id() {
        let trace = Trace::from_headers(&with(&[GOOD]));
        assert!(trace.continued);
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let sent = trace.traceparent().to_str().unwrap();
        assert_eq!(sent.len(), 55);
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(sent.ends_with("-01"));
        assert_ne!(&sent[36..52], "00f067aa0ba902b7", "this hop's own span id");
        // Unsampled stays unsampled.
        let unsampled = GOOD.replace("-01", "-00");
        let trace = Trace::from_headers(&with(&[&unsampled]));
        assert!(trace.traceparent().to_str().unwrap().ends_with("-00"));
        // A later version with more fields is read for what version 00 defines.
        let future = format!("cc{}-what-ever", &GOOD[2..]);
        assert!(Trace::from_headers(&with(&[&future])).continued);
    }

    #[test]
    fn malformed_parents_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let trace = Trace::from_headers(&with(&[bad]));
            assert!(!trace.continued, "{bad:?}");
            assert_eq!(trace.trace_id().len(), 32);
            assert_ne!(trace.trace_id(), "00000000000000000000000000000000");
        }
        // Two traceparent headers: which one? Neither.
        assert!(!Trace::from_headers(&with(&[GOOD, GOOD])).continued);
        assert!(!Trace::from_headers(&HeaderMap::new()).continued);
    }

    #[test]
    fn the_sampler_decides_new_traces_by_their_id() {
        let id = |low: u64| {
            let mut trace_id = [0xff; 16];
            trace_id[8..].copy_from_slice(&low.to_be_bytes());
            trace_id
        };
        let half = Sampler::ratio(0.5);
        // Only the 56 low bits count: the high byte of the low half is ignored.
        assert!(half.samples(&id(0xff7f_ffff_ffff_ffff)));
        assert!(!half.samples(&id(0x0080_0000_0000_0000)));
        for ratio in [0.0, 0.1, 0.5, 1.0] {
            let sampler = Sampler::ratio(ratio);
            assert_eq!(sampler.samples(&id(0)), ratio > 0.0, "{ratio}");
            assert_eq!(sampler.samples(&id(u64::MAX)), ratio == 1.0, "{ratio}");
        }
        assert_eq!(Sampler::ratio(1.0), Sampler::ALWAYS);
        assert_eq!(Sampler::ratio(f64::NAN), Sampler::ratio(0.0));
        // Roughly the ratio over random ids.
        let sampled = (0..4000)
            .filter(|_| {
                let mut trace_id = [0u8; 16];
                random(&mut trace_id);
                Sampler::ratio(0.25).samples(&trace_id)
            })
            .count();
        assert!((700..1300).contains(&sampled), "{sampled} of 4000");
    }

    #[test]
    fn a_continued_trace_keeps_its_callers_decision() {
        let never = Sampler::ratio(0.0);
        let trace = Trace::start(&with(&[GOOD]), &never);
        assert!(trace.sampled(), "the caller sampled it");
        assert_eq!(
            trace.parent_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(&trace.traceparent().to_str().unwrap()[36..52], {
            let mut text = Vec::new();
            hex(&trace.span_id, &mut text);
            String::from_utf8(text).unwrap()
        });
        let unsampled = GOOD.replace("-01", "-00");
        assert!(!Trace::start(&with(&[&unsampled]), &Sampler::ALWAYS).sampled());

        let started = Trace::start(&HeaderMap::new(), &never);
        assert!(!started.sampled());
        assert_eq!(started.parent_id, None);
        assert!(started.traceparent().to_str().unwrap().ends_with("-00"));
        let started = Trace::start(&HeaderMap::new(), &Sampler::ALWAYS);
        assert!(started.sampled());
        assert!(started.traceparent().to_str().unwrap().ends_with("-01"));
    }

    #[test]
    fn tracestate_goes_only_with_a_usable_parent() {
        let mut headers = with(&[GOOD]);
        headers.insert(TRACESTATE.clone(), HeaderValue::from_static("vendor=1"));
        let mut sent = headers.clone();
        Trace::from_headers(&headers).apply(&mut sent);
        assert_eq!(sent[&TRACESTATE], "vendor=1");
        let mut orphan = HeaderMap::new();
        orphan.insert(TRACESTATE.clone(), HeaderValue::from_static("vendor=1"));
        let mut sent = orphan.clone();
        Trace::from_headers(&orphan).apply(&mut sent);
        assert!(!sent.contains_key(&TRACESTATE));
        assert_eq!(sent.get_all(&TRACEPARENT).iter().count(), 1);
    }
}

//! Hybrid logical clock timestamps.
//!
//! [`Hlc`] wraps `hybrid_clocks::Timestamp<WallNST>` so the rest of Meridian
//! has one type with one text form. This module only represents, orders and
//! formats timestamps; the clock itself (which reads the wall clock) lives in
//! the server, which passes timestamps in.
//!
//! Text form: RFC 3339 in UTC with nanoseconds, then `_` and the logical
//! counter, e.g. `2026-11-22T03:20:12.123456789Z_3`. `_` is unreserved in
//! URLs, so the form can be used in `?at=` without escaping. Parsing also
//! accepts any RFC 3339 time without a counter (counter 0).

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use hybrid_clocks::{Timestamp, WallNST};

/// A hybrid logical clock timestamp: wall time in nanoseconds since the Unix
/// epoch plus a logical counter. Totally ordered; causally later events carry
/// larger timestamps.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hlc(Timestamp<WallNST>);

/// A timestamp that could not be parsed, with what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid HLC timestamp {input:?}: {reason}; expected RFC 3339 like 2026-11-22T03:20:12.5Z or 2026-11-22T03:20:12.123456789Z_3")]
pub struct HlcParseError {
    input: String,
    reason: &'static str,
}

impl Hlc {
    /// The smallest timestamp; below every real one.
    pub fn zero() -> Hlc {
        Hlc::new(0, 0)
    }

    /// Builds a timestamp from wall nanoseconds and a logical counter.
    pub fn new(wall_ns: u64, logical: u32) -> Hlc {
        Hlc(Timestamp { epoch: 0, time: WallNST::of_u64(wall_ns), count: logical })
    }

    /// The next timestamp after this one (same wall time, counter + 1). The
    /// largest timestamp is its own successor: wrapping to zero would stamp a
    /// change below its dependency (a peer's record can carry any HLC).
    pub fn successor(&self) -> Hlc {
        match (self.logical().checked_add(1), self.wall_ns().checked_add(1)) {
            (Some(logical), _) => Hlc::new(self.wall_ns(), logical),
            (None, Some(wall)) => Hlc::new(wall, 0),
            (None, None) => *self,
        }
    }

    /// The timestamp just before this one.
    pub fn predecessor(&self) -> Hlc {
        match (self.logical(), self.wall_ns()) {
            (0, 0) => Hlc::zero(),
            (0, wall) => Hlc::new(wall - 1, u32::MAX),
            (logical, wall) => Hlc::new(wall, logical - 1),
        }
    }

    /// Wall-clock part, nanoseconds since the Unix epoch.
    pub fn wall_ns(&self) -> u64 {
        self.0.time.as_u64()
    }

    /// Logical counter part.
    pub fn logical(&self) -> u32 {
        self.0.count
    }

    /// Milliseconds since the Unix epoch (wall part only).
    pub fn wall_ms(&self) -> u64 {
        self.wall_ns() / 1_000_000
    }

    /// The underlying hybrid-clocks timestamp, for feeding a clock.
    pub fn inner(&self) -> Timestamp<WallNST> {
        self.0
    }

    /// Fixed 12-byte big-endian encoding (wall ns, counter); sorts like the value.
    pub fn to_bytes(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&self.wall_ns().to_be_bytes());
        out[8..].copy_from_slice(&self.logical().to_be_bytes());
        out
    }

    /// Inverse of [`Hlc::to_bytes`].
    pub fn from_bytes(bytes: [u8; 12]) -> Hlc {
        let wall = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
        let logical = u32::from_be_bytes(bytes[8..].try_into().expect("4 bytes"));
        Hlc::new(wall, logical)
    }

    /// Parses the text form (see the module docs).
    pub fn parse(input: &str) -> Result<Hlc, HlcParseError> {
        let err = |reason| HlcParseError { input: input.chars().take(80).collect(), reason };
        let (time_part, logical) = match input.rsplit_once('_') {
            Some((time, count)) => {
                let logical = count.parse::<u32>().map_err(|_| err("the logical counter after '_' is not a number"))?;
                (time, logical)
            }
            None => (input, 0),
        };
        let system_time = humantime::parse_rfc3339_weak(time_part).map_err(|_| err("not an RFC 3339 time"))?;
        let since_epoch = system_time.duration_since(UNIX_EPOCH).map_err(|_| err("before 1970"))?;
        let wall_ns = u64::try_from(since_epoch.as_nanos()).map_err(|_| err("too far in the future"))?;
        Ok(Hlc::new(wall_ns, logical))
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = UNIX_EPOCH + Duration::from_nanos(self.wall_ns());
        write!(f, "{}_{}", humantime::format_rfc3339_nanos(time), self.logical())
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Default for Hlc {
    /// The zero timestamp.
    fn default() -> Self {
        Hlc::zero()
    }
}

impl From<Timestamp<WallNST>> for Hlc {
    fn from(ts: Timestamp<WallNST>) -> Self {
        Hlc(ts)
    }
}

impl serde::Serialize for Hlc {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_keeps_nanoseconds_and_counter() {
        let hlc = Hlc::new(1_795_000_000_123_456_789, 7);
        let text = hlc.to_string();
        assert!(text.ends_with("Z_7"), "{text}");
        assert_eq!(Hlc::parse(&text).unwrap(), hlc);
    }

    #[test]
    fn plain_rfc3339_parses_with_counter_zero() {
        let hlc = Hlc::parse("2026-11-22T03:20:12.5Z").unwrap();
        assert_eq!(hlc.logical(), 0);
        assert_eq!(hlc.wall_ns() % 1_000_000_000, 500_000_000);
    }

    #[test]
    fn order_is_wall_then_counter() {
        assert!(Hlc::new(5, 9) < Hlc::new(6, 0));
        assert!(Hlc::new(5, 1) < Hlc::new(5, 2));
        assert_eq!(Hlc::from_bytes(Hlc::new(5, 2).to_bytes()), Hlc::new(5, 2));
    }

    #[test]
    fn successor_of_the_largest_timestamp_saturates() {
        // Found by the hlc_text fuzz target: `wall + 1` overflowed.
        let max = Hlc::new(u64::MAX, u32::MAX);
        assert_eq!(max.successor(), max);
        assert_eq!(Hlc::new(5, u32::MAX).successor(), Hlc::new(6, 0));
        assert_eq!(max.predecessor().successor(), max);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let err = Hlc::parse("yesterday").unwrap_err();
        assert!(err.to_string().contains("RFC 3339"));
        assert!(Hlc::parse("2026-11-22T03:20:12Z_x").is_err());
    }
}

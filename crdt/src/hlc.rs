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
use std::time::UNIX_EPOCH;

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
    /// Formatted by hand into a stack buffer: every read answers with its
    /// safe time, and `humantime`'s formatter through `write!` was a
    /// twentieth of a cached read's CPU. The tests check it against
    /// `humantime` on many values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wall = self.wall_ns();
        let (secs, nanos) = (wall / 1_000_000_000, wall % 1_000_000_000);
        let (year, month, day) = civil_from_days(secs / 86_400);
        let of_day = secs % 86_400;
        // "YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ_" is 31 bytes; a u32 counter at most 10 more.
        let mut buf = [0u8; 41];
        let mut at = 0;
        let mut put = |mut value: u64, width: usize, then: u8| {
            for i in (0..width).rev() {
                buf[at + i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
            buf[at + width] = then;
            at += width + 1;
        };
        put(year, 4, b'-');
        put(month, 2, b'-');
        put(day, 2, b'T');
        put(of_day / 3600, 2, b':');
        put(of_day / 60 % 60, 2, b':');
        put(of_day % 60, 2, b'.');
        put(nanos, 9, b'Z');
        buf[at] = b'_';
        at += 1;
        let mut logical = self.logical();
        let digits = logical.checked_ilog10().unwrap_or(0) as usize + 1;
        for i in (0..digits).rev() {
            buf[at + i] = b'0' + (logical % 10) as u8;
            logical /= 10;
        }
        at += digits;
        f.write_str(std::str::from_utf8(&buf[..at]).expect("ASCII digits and separators"))
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01, as (year,
/// month, day): Howard Hinnant's `civil_from_days`, for days on or after
/// the epoch only (all a u64 of nanoseconds can reach, up to year 2554).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
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
    use std::time::Duration;

    #[test]
    fn text_round_trip_keeps_nanoseconds_and_counter() {
        let hlc = Hlc::new(1_795_000_000_123_456_789, 7);
        let text = hlc.to_string();
        assert!(text.ends_with("Z_7"), "{text}");
        assert_eq!(Hlc::parse(&text).unwrap(), hlc);
    }

    #[test]
    fn text_form_matches_humantime() {
        let reference = |hlc: Hlc| {
            let time = UNIX_EPOCH + Duration::from_nanos(hlc.wall_ns());
            format!("{}_{}", humantime::format_rfc3339_nanos(time), hlc.logical())
        };
        let day = 86_400 * 1_000_000_000u64;
        let mut cases = vec![
            Hlc::zero(),
            Hlc::new(u64::MAX, u32::MAX),
            Hlc::new(951_782_400 * 1_000_000_000, 1), // 2000-02-29, a leap day of a century leap year
            Hlc::new(4_107_542_400 * 1_000_000_000 - 1, 9), // the last nanosecond of 2099-12-31
            Hlc::new(4_107_542_400 * 1_000_000_000 + 59 * day, 10), // 2100-03-01; 2100 is not a leap year
        ];
        // A fixed-seed LCG: a spread of values over the whole range, the same every run.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            cases.push(Hlc::new(x, (x >> 40) as u32 % 1000));
        }
        for hlc in cases {
            assert_eq!(hlc.to_string(), reference(hlc), "{:?}", hlc.to_bytes());
        }
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

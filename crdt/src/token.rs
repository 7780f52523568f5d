//! Tokens: opaque strings naming a position in the replicated history.
//!
//! A token lists, per origin, a sequence number `n` meaning "every change of
//! this origin up to `n`". A write answers with the token of its own change;
//! a reader that carries it to another region can ask that region to wait
//! until it has those changes (read-your-writes, monotonic reads).
//!
//! Text form: unpadded base64url of `[version=1] ([origin: 8 bytes BE]
//! [seq: LEB128])*`. Clients must treat it as opaque; the version byte lets
//! the form change later.

use std::collections::BTreeMap;
use std::fmt;

use crate::base64url;
use crate::ids::NodeId;

const VERSION: u8 = 1;
/// Tokens naming more origins than this are refused: clusters have at most a
/// handful of regions, and a bound keeps parsing cheap.
pub const ORIGINS_MAX: usize = 64;

/// A position in the replicated history: per origin, the prefix of its
/// changes it requires.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct Token {
    /// Required contiguous prefix per origin.
    pub entries: BTreeMap<NodeId, u64>,
}

/// A token that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid token: {0}; pass back a Meridian-Token value exactly as a response gave it")]
pub struct TokenParseError(&'static str);

impl Token {
    /// The token of a single change.
    pub fn of_change(origin: NodeId, seq: u64) -> Token {
        Token { entries: BTreeMap::from([(origin, seq)]) }
    }

    /// Combines two tokens: the later position for every origin.
    pub fn join(&mut self, other: &Token) {
        for (&origin, &seq) in &other.entries {
            let entry = self.entries.entry(origin).or_insert(0);
            *entry = (*entry).max(seq);
        }
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Result<Token, TokenParseError> {
        if text.len() > 2 + ORIGINS_MAX * 26 {
            return Err(TokenParseError("too long"));
        }
        let bytes = base64url::decode(text).ok_or(TokenParseError("not base64url"))?;
        let (&version, mut rest) = bytes.split_first().ok_or(TokenParseError("empty"))?;
        if version != VERSION {
            return Err(TokenParseError("unknown token version"));
        }
        let mut entries = BTreeMap::new();
        while !rest.is_empty() {
            if rest.len() < 9 {
                return Err(TokenParseError("truncated"));
            }
            let origin = NodeId(u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")));
            rest = &rest[8..];
            let (seq, used) = read_varint(rest).ok_or(TokenParseError("truncated sequence number"))?;
            rest = &rest[used..];
            if entries.insert(origin, seq).is_some() {
                return Err(TokenParseError("origin listed twice"));
            }
            if entries.len() > ORIGINS_MAX {
                return Err(TokenParseError("too many origins"));
            }
        }
        Ok(Token { entries })
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = vec![VERSION];
        for (origin, &seq) in &self.entries {
            bytes.extend_from_slice(&origin.0.to_be_bytes());
            write_varint(&mut bytes, seq);
        }
        f.write_str(&base64url::encode(&bytes))
    }
}

/// Appends `value` as unsigned LEB128.
pub fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads unsigned LEB128; returns the value and the bytes used, or `None`
/// when truncated or longer than a u64.
pub fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        let part = u64::from(byte & 0x7f);
        if i == 9 && part > 1 {
            return None;
        }
        value |= part << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_garbage() {
        assert!(Token::parse("").is_err());
        assert!(Token::parse("!!!").is_err());
        assert!(Token::parse("AA").is_err());
        let err = Token::parse("not a token").unwrap_err();
        assert!(err.to_string().contains("Meridian-Token"));
    }

    proptest! {
        #[test]
        fn round_trips(entries in proptest::collection::btree_map(any::<u64>(), any::<u64>(), 0..10)) {
            let token = Token { entries: entries.into_iter().map(|(o, s)| (NodeId(o), s)).collect() };
            prop_assert_eq!(Token::parse(&token.to_string()).unwrap(), token);
        }

        #[test]
        fn never_panics_on_arbitrary_text(text in ".{0,80}") {
            let _ = Token::parse(&text);
        }
    }
}

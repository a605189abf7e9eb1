//! Sign-In with Ethereum (EIP-4361): parse the message, check its fields,
//! recover its signer.
//!
//! The parser is strict about the fields Tollgate relies on (domain, address,
//! URI, version, chain id, nonce, times) and bounded: messages over
//! [`MESSAGE_MAX_BYTES`] are refused before parsing.

use chrono::{DateTime, Utc};
use ledger::{ChainId, WalletAddress};

use super::eth;

/// The longest SIWE message accepted. Real ones are a few hundred bytes.
pub const MESSAGE_MAX_BYTES: usize = 4_096;

const PREAMBLE: &str = " wants you to sign in with your Ethereum account:";

/// A parsed EIP-4361 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiweMessage {
    pub domain: String,
    pub address: WalletAddress,
    pub statement: Option<String>,
    pub uri: String,
    pub version: String,
    pub chain_id: ChainId,
    pub nonce: String,
    pub issued_at_ms: i64,
    pub expiration_time_ms: Option<i64>,
    pub not_before_ms: Option<i64>,
}

/// Why a sign-in was refused. Each maps to one precise API error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiweError {
    #[error("SIWE message is malformed: {0}")]
    Malformed(String),
    #[error("SIWE message domain {found:?} is not this server's (expected one of {expected:?})")]
    Domain {
        expected: Vec<String>,
        found: String,
    },
    #[error(
        "SIWE message URI {found:?} is not on this server's domains (expected one of {expected:?})"
    )]
    Uri {
        expected: Vec<String>,
        found: String,
    },
    #[error("SIWE chain id {0} is not a configured chain")]
    Chain(u64),
    #[error("SIWE message is not yet valid or no longer valid: {0}")]
    Time(String),
    #[error("signature is malformed: {0}")]
    Signature(#[from] eth::SignatureError),
    #[error("signature was not made by the message's address")]
    WrongSigner,
}

fn malformed(what: impl Into<String>) -> SiweError {
    SiweError::Malformed(what.into())
}

fn parse_time(field: &str, text: &str) -> Result<i64, SiweError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc).timestamp_millis())
        .map_err(|_| malformed(format!("{field} must be an RFC 3339 date-time")))
}

/// A message's lines.
type Lines<'a> = std::str::Split<'a, char>;

/// The first two lines: the domain (an optional scheme before it dropped)
/// and the address.
fn parse_header<'a>(lines: &mut Lines<'a>) -> Result<(&'a str, WalletAddress), SiweError> {
    let first = lines.next().unwrap_or_default();
    let authority = first.strip_suffix(PREAMBLE).ok_or_else(|| {
        malformed(
            "first line must be \"<domain> wants you to sign in with your Ethereum account:\"",
        )
    })?;
    // An optional scheme may precede the domain.
    let domain = authority.split_once("://").map_or(authority, |(_, d)| d);
    if domain.is_empty() || domain.contains(char::is_whitespace) {
        return Err(malformed("domain is empty or contains spaces"));
    }
    let address = lines
        .next()
        .ok_or_else(|| malformed("missing address line"))?
        .parse::<WalletAddress>()
        .map_err(|e| malformed(format!("address {e}")))?;
    Ok((domain, address))
}

/// Blank lines, an optional statement, blank lines: answers the statement
/// and the line after them (the first field's).
fn parse_statement<'a>(lines: &mut Lines<'a>) -> (Option<String>, Option<&'a str>) {
    let mut statement = None;
    let mut next = lines.next();
    while next == Some("") {
        next = lines.next();
    }
    if let Some(line) = next {
        if !line.starts_with("URI: ") {
            statement = Some(line.to_owned());
            next = lines.next();
            while next == Some("") {
                next = lines.next();
            }
        }
    }
    (statement, next)
}

/// A message's `Name: value` fields, in the order they came.
struct Fields<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Fields<'a> {
    /// The field lines from `first` on, up to `Resources:` (whose lines run
    /// to the end of the message and are checked, not kept).
    fn parse(first: Option<&'a str>, lines: &mut Lines<'a>) -> Result<Fields<'a>, SiweError> {
        let mut fields = Vec::new();
        let mut line = first;
        while let Some(text) = line {
            if text == "Resources:" {
                // Resources run to the end of the message; Tollgate does not use them.
                for resource in lines.by_ref() {
                    if !resource.starts_with("- ") {
                        return Err(malformed("each resource line must start with \"- \""));
                    }
                }
                break;
            }
            let (name, value) = text
                .split_once(": ")
                .ok_or_else(|| malformed(format!("unexpected line {text:?}")))?;
            fields.push((name, value));
            line = lines.next();
        }
        Ok(Fields(fields))
    }

    /// The next field when it is `name`; a field `name` further on is out
    /// of order.
    fn take(&mut self, name: &str, required: bool) -> Result<Option<String>, SiweError> {
        match self.0.iter().position(|(n, _)| *n == name) {
            Some(0) => Ok(Some(self.0.remove(0).1.to_owned())),
            Some(_) => Err(malformed(format!("field {name:?} is out of order"))),
            None if required => Err(malformed(format!("missing field {name:?}"))),
            None => Ok(None),
        }
    }

    fn required(&mut self, name: &str) -> Result<String, SiweError> {
        Ok(self.take(name, true)?.unwrap_or_default())
    }

    /// An optional date-time field, in ms since the epoch.
    fn time(&mut self, name: &str) -> Result<Option<i64>, SiweError> {
        self.take(name, false)?
            .map(|t| parse_time(name, &t))
            .transpose()
    }

    /// Every field must have been taken.
    fn none_left(&self) -> Result<(), SiweError> {
        match self.0.first() {
            Some((name, _)) => Err(malformed(format!("unexpected field {name:?}"))),
            None => Ok(()),
        }
    }
}

impl SiweMessage {
    /// Parses the text a wallet signed.
    pub fn parse(text: &str) -> Result<SiweMessage, SiweError> {
        if text.len() > MESSAGE_MAX_BYTES {
            return Err(malformed(format!("longer than {MESSAGE_MAX_BYTES} bytes")));
        }
        let mut lines = text.split('\n');
        let (domain, address) = parse_header(&mut lines)?;
        // Blank line, optional statement, blank line, then the fields.
        let (statement, next) = parse_statement(&mut lines);
        let mut fields = Fields::parse(next, &mut lines)?;
        let uri = fields.required("URI")?;
        let version = fields.required("Version")?;
        if version != "1" {
            return Err(malformed("Version must be 1"));
        }
        let chain_id = fields
            .required("Chain ID")?
            .parse::<u64>()
            .map_err(|_| malformed("Chain ID must be a positive integer"))?;
        let nonce = fields.required("Nonce")?;
        if nonce.len() < 8 || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(malformed("Nonce must be 8 to 64 letters and digits"));
        }
        let issued_at_ms = parse_time("Issued At", &fields.required("Issued At")?)?;
        let expiration_time_ms = fields.time("Expiration Time")?;
        let not_before_ms = fields.time("Not Before")?;
        let _request_id = fields.take("Request ID", false)?;
        fields.none_left()?;
        Ok(SiweMessage {
            domain: domain.to_owned(),
            address,
            statement,
            uri,
            version,
            chain_id: ChainId(chain_id),
            nonce,
            issued_at_ms,
            expiration_time_ms,
            not_before_ms,
        })
    }

    /// Renders the message in EIP-4361's form (used by the CLI's dev sign-in).
    pub fn render(&self) -> String {
        let mut out = format!("{}{PREAMBLE}\n{}\n\n", self.domain, self.address);
        if let Some(statement) = &self.statement {
            out.push_str(statement);
            out.push_str("\n\n");
        }
        let iso = |ms: i64| {
            DateTime::<Utc>::from_timestamp_millis(ms)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        out.push_str(&format!(
            "URI: {}\nVersion: {}\nChain ID: {}\nNonce: {}\nIssued At: {}",
            self.uri,
            self.version,
            self.chain_id,
            self.nonce,
            iso(self.issued_at_ms)
        ));
        if let Some(ms) = self.expiration_time_ms {
            out.push_str(&format!("\nExpiration Time: {}", iso(ms)));
        }
        if let Some(ms) = self.not_before_ms {
            out.push_str(&format!("\nNot Before: {}", iso(ms)));
        }
        out
    }
}

/// What a message is checked against besides its signature.
pub struct SiweExpectations<'a> {
    /// The server's own domains (`auth.siwe_domains`): the message's domain
    /// and its URI's authority must be one of them.
    pub domains: &'a [String],
    pub now_ms: i64,
    /// How old `Issued At` may be.
    pub issued_at_max_age_ms: i64,
    /// Tolerated clock difference between wallet and server.
    pub clock_skew_ms: i64,
    pub chain_configured: &'a dyn Fn(ChainId) -> bool,
}

/// Parses, checks and verifies a signed sign-in message. The nonce is left
/// for the store to consume.
pub fn verify(
    text: &str,
    signature: &str,
    expect: &SiweExpectations<'_>,
) -> Result<SiweMessage, SiweError> {
    let message = SiweMessage::parse(text)?;
    let ours = |authority: &str| {
        expect
            .domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(authority))
    };
    if !ours(&message.domain) {
        return Err(SiweError::Domain {
            expected: expect.domains.to_vec(),
            found: message.domain,
        });
    }
    if !uri_authority(&message.uri).is_some_and(ours) {
        return Err(SiweError::Uri {
            expected: expect.domains.to_vec(),
            found: message.uri,
        });
    }
    if !(expect.chain_configured)(message.chain_id) {
        return Err(SiweError::Chain(message.chain_id.0));
    }
    let now = expect.now_ms;
    if message.issued_at_ms > now + expect.clock_skew_ms {
        return Err(SiweError::Time("Issued At is in the future".into()));
    }
    if message.issued_at_ms < now - expect.issued_at_max_age_ms {
        return Err(SiweError::Time(
            "Issued At is too old; request a new nonce".into(),
        ));
    }
    if message.expiration_time_ms.is_some_and(|t| t <= now) {
        return Err(SiweError::Time("Expiration Time has passed".into()));
    }
    if message
        .not_before_ms
        .is_some_and(|t| t > now + expect.clock_skew_ms)
    {
        return Err(SiweError::Time("Not Before is in the future".into()));
    }
    let signer = eth::recover_personal_signer(text.as_bytes(), signature)?;
    if signer != message.address {
        return Err(SiweError::WrongSigner);
    }
    Ok(message)
}

/// The authority (`host[:port]`) of an absolute `http(s)` URI; `None` for
/// anything else, and for user info (`https://ours@evil.example/`).
fn uri_authority(uri: &str) -> Option<&str> {
    let (scheme, rest) = uri.split_once("://")?;
    if !(scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http")) {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty() && !authority.contains('@')).then_some(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_authorities() {
        assert_eq!(
            uri_authority("https://service.org/login"),
            Some("service.org")
        );
        assert_eq!(
            uri_authority("http://127.0.0.1:8080"),
            Some("127.0.0.1:8080")
        );
        assert_eq!(uri_authority("https://a.org?x#y"), Some("a.org"));
        assert_eq!(uri_authority("https://a.org@evil.example/"), None);
        assert_eq!(uri_authority("ftp://a.org/"), None);
        assert_eq!(uri_authority("a.org/login"), None);
    }

    const EXAMPLE: &str = "service.org wants you to sign in with your Ethereum account:
0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2

I accept the ServiceOrg Terms of Service: https://service.org/tos

URI: https://service.org/login
Version: 1
Chain ID: 1
Nonce: 32891757
Issued At: 2021-09-30T16:25:24.000Z
Resources:
- ipfs://Qme7ss3ARVgxv6rXqVPiikMJ8u2NLgmgszg13pYrDKEoiu
- https://example.com/my-web2-claim.json";

    #[test]
    fn parses_the_eip_example() {
        let m = SiweMessage::parse(EXAMPLE).unwrap();
        assert_eq!(m.domain, "service.org");
        assert_eq!(m.chain_id, ChainId(1));
        assert_eq!(m.nonce, "32891757");
        assert_eq!(m.issued_at_ms, 1_633_019_124_000);
        assert!(m.statement.unwrap().starts_with("I accept"));
    }

    #[test]
    fn render_and_parse_round_trip_without_statement() {
        let mut m = SiweMessage::parse(EXAMPLE).unwrap();
        m.statement = None;
        m.expiration_time_ms = Some(1_633_019_999_000);
        assert_eq!(SiweMessage::parse(&m.render()).unwrap(), m);
    }

    #[test]
    fn refuses_malformed_messages() {
        for bad in [
            "",
            "hello",
            &EXAMPLE.replace("Version: 1", "Version: 2"),
            &EXAMPLE.replace("Nonce: 32891757", "Nonce: 12"),
            &EXAMPLE.replace("Chain ID: 1", "Chain ID: one"),
            &EXAMPLE.replace("2021-09-30T16:25:24.000Z", "yesterday"),
            &EXAMPLE.replace(
                "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2",
                "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756CC2",
            ),
            &EXAMPLE.replace(
                "URI: https://service.org/login\nVersion: 1",
                "Version: 1\nURI: https://service.org/login",
            ),
        ] {
            assert!(
                matches!(SiweMessage::parse(bad), Err(SiweError::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}

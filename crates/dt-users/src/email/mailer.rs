use std::path::PathBuf;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{EmailIntent, RenderedEmail};

/// Why an email did not leave.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: the server is down, busy, or said "try later" (4xx).
    #[error("temporary failure: {0}")]
    Transient(String),
    /// Retrying cannot help: the server refused for good (5xx) or the address is invalid.
    #[error("permanent failure: {0}")]
    Permanent(String),
}

/// Where emails go: an SMTP server, or `.eml` files (the embedded default).
#[derive(Clone)]
pub enum Mailer {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
    },
    Files {
        dir: PathBuf,
        from: Mailbox,
    },
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Smtp { .. } => f.write_str("Mailer::Smtp"),
            Self::Files { dir, .. } => f.debug_struct("Mailer::Files").field("dir", dir).finish(),
        }
    }
}

impl Mailer {
    /// `smtp://[user:pass@]host[:port][?starttls=true]` or `smtps://…` (implicit TLS); without
    /// a URL, files under `mail_dir`.
    pub fn new(smtp_url: Option<&str>, mail_dir: PathBuf, from: &str) -> Result<Self, String> {
        let from: Mailbox = from
            .parse()
            .map_err(|e| format!("DT_USERS_EMAIL_FROM: {e}"))?;
        let Some(raw) = smtp_url.filter(|u| !u.trim().is_empty()) else {
            return Ok(Self::Files {
                dir: mail_dir,
                from,
            });
        };
        let url = url::Url::parse(raw.trim()).map_err(|e| format!("DT_USERS_SMTP_URL: {e}"))?;
        let host = url
            .host_str()
            .ok_or("DT_USERS_SMTP_URL has no host")?
            .to_owned();
        let starttls = url
            .query_pairs()
            .any(|(k, v)| k == "starttls" && (v == "true" || v == "1"));
        let builder = match url.scheme() {
            "smtps" => AsyncSmtpTransport::<Tokio1Executor>::relay(&host)
                .map_err(|e| e.to_string())?
                .port(url.port().unwrap_or(465)),
            "smtp" if starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host)
                .map_err(|e| e.to_string())?
                .port(url.port().unwrap_or(587)),
            "smtp" => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
                .port(url.port().unwrap_or(25)),
            other => return Err(format!("DT_USERS_SMTP_URL: unsupported scheme {other}")),
        };
        let builder = builder.timeout(Some(Duration::from_secs(15)));
        let builder = if url.username().is_empty() {
            builder
        } else {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            builder.credentials(Credentials::new(
                decode(url.username()),
                decode(url.password().unwrap_or_default()),
            ))
        };
        Ok(Self::Smtp {
            transport: builder.build(),
            from,
        })
    }

    fn from(&self) -> &Mailbox {
        match self {
            Self::Smtp { from, .. } | Self::Files { from, .. } => from,
        }
    }

    /// Sends one rendered email. Its `Message-ID` is derived from the intent, so that the
    /// rare duplicate is recognisable as such.
    pub async fn send(&self, intent: &EmailIntent, email: &RenderedEmail) -> Result<(), SendError> {
        let to: Mailbox = intent
            .to
            .parse()
            .map_err(|e| SendError::Permanent(format!("invalid recipient: {e}")))?;
        let message = Message::builder()
            .from(self.from().clone())
            .to(to)
            .subject(email.subject.clone())
            .message_id(Some(format!("<{}@dt-users>", intent.id)))
            .multipart(MultiPart::alternative_plain_html(
                email.text.clone(),
                email.html.clone(),
            ))
            .map_err(|e| SendError::Permanent(format!("building the message: {e}")))?;
        match self {
            Self::Smtp { transport, .. } => {
                transport.send(message).await.map(|_| ()).map_err(|e| {
                    // A server's refusal often quotes the recipient; the reason goes to logs
                    // and to the job queue's record of the attempt, the address must not.
                    let reason = without_addresses(&e.to_string());
                    if e.is_permanent() {
                        SendError::Permanent(reason)
                    } else {
                        SendError::Transient(reason)
                    }
                })
            }
            Self::Files { dir, .. } => {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| SendError::Transient(e.to_string()))?;
                let path = dir.join(format!("{}.eml", intent.id));
                tokio::fs::write(&path, message.formatted())
                    .await
                    .map_err(|e| SendError::Transient(e.to_string()))?;
                tracing::info!(path = %path.display(), kind = intent.kind.name(), "email written to a file");
                Ok(())
            }
        }
    }
}

/// `text` with every email address in it replaced by `[address]`.
fn without_addresses(text: &str) -> String {
    let delimiter = |c: char| c.is_whitespace() || "<>\"'(),;:[]".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        let (before, after) = rest.split_at(at);
        let start = before.rfind(delimiter).map_or(0, |i| {
            let width = before.get(i..).and_then(|s| s.chars().next());
            i + width.map_or(1, char::len_utf8)
        });
        let end = after.find(delimiter).unwrap_or(after.len());
        out.push_str(before.get(..start).unwrap_or_default());
        out.push_str("[address]");
        rest = after.get(end..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn addresses_are_taken_out_of_server_replies() {
        assert_eq!(
            without_addresses(
                "permanent error (550): 5.1.1 <bob@example.com>: Recipient address rejected"
            ),
            "permanent error (550): 5.1.1 <[address]>: Recipient address rejected"
        );
        assert_eq!(
            without_addresses("user jos\u{e9}@b\u{fc}cher.de unknown, also x@y.z"),
            "user [address] unknown, also [address]"
        );
        assert_eq!(
            without_addresses("connection refused"),
            "connection refused"
        );
        assert_eq!(without_addresses("@"), "[address]");
    }

    proptest! {
        #[test]
        fn no_address_survives(text in "\\PC*", local in "[a-z0-9.]{1,10}", domain in "[a-z]{1,10}\\.[a-z]{2,3}") {
            let address = format!("{local}@{domain}");
            let cleaned = without_addresses(&format!("{text} <{address}> {text}"));
            prop_assert!(!cleaned.contains(&address));
        }
    }
}

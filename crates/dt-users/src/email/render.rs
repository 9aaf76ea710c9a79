use std::sync::LazyLock;

use minijinja::{Environment, Value, context};

use super::{EmailIntent, EmailKind};

macro_rules! email_templates {
    ($($name:literal),* $(,)?) => {
        &[$(
            (concat!($name, "/subject.txt"), include_str!(concat!("../../templates/email/", $name, "/subject.txt"))),
            (concat!($name, "/body.txt"), include_str!(concat!("../../templates/email/", $name, "/body.txt"))),
            (concat!($name, "/body.html"), include_str!(concat!("../../templates/email/", $name, "/body.html"))),
        )*]
    };
}

const TEMPLATES: &[(&str, &str)] = email_templates!(
    "welcome",
    "verify_email",
    "password_reset",
    "password_changed",
    "email_change_confirm",
    "email_change_notice",
    "account_restore",
    "two_factor_enabled",
    "two_factor_disabled",
    "recovery_code_used",
    "passkey_added",
    "passkey_removed",
    "identity_linked",
    "identity_unlinked",
);

/// The templates, compiled once. HTML templates (`.html`) escape every value.
static ENVIRONMENT: LazyLock<Result<Environment<'static>, minijinja::Error>> =
    LazyLock::new(|| {
        let mut env = Environment::new();
        env.add_template("base.html", include_str!("../../templates/email/base.html"))?;
        env.add_template("base.txt", include_str!("../../templates/email/base.txt"))?;
        for (name, source) in TEMPLATES {
            env.add_template(name, source)?;
        }
        Ok(env)
    });

/// An email ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedEmail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The values of the email's own template, by their names in it.
fn template_values(kind: &EmailKind) -> Value {
    let values: Vec<(&str, Value)> = match kind {
        EmailKind::PasswordChanged(p) => vec![("changed_at", Value::from(&*p.changed_at))],
        EmailKind::EmailChangeNotice(p) => vec![
            ("new_email_masked", Value::from(&*p.new_email_masked)),
            ("requested_at", Value::from(&*p.requested_at)),
        ],
        EmailKind::AccountRestore(p) => vec![("restore_until", Value::from(&*p.restore_until))],
        EmailKind::TwoFactorEnabled(p) | EmailKind::TwoFactorDisabled(p) => vec![
            ("method", Value::from(&*p.method)),
            ("at", Value::from(&*p.at)),
        ],
        EmailKind::RecoveryCodeUsed(p) => vec![
            ("used_at", Value::from(&*p.used_at)),
            ("codes_left", Value::from(p.codes_left)),
        ],
        EmailKind::PasskeyAdded(p) | EmailKind::PasskeyRemoved(p) => vec![
            ("passkey_name", Value::from(&*p.passkey_name)),
            ("at", Value::from(&*p.at)),
        ],
        EmailKind::IdentityLinked(p) | EmailKind::IdentityUnlinked(p) => vec![
            ("provider", Value::from(&*p.provider)),
            ("at", Value::from(&*p.at)),
        ],
        EmailKind::Welcome(_)
        | EmailKind::VerifyEmail(_)
        | EmailKind::PasswordReset(_)
        | EmailKind::EmailChangeConfirm(_) => Vec::new(),
    };
    Value::from_pairs(values)
}

/// Renders `intent` with its link and token (`token` is `None` for notices).
pub fn render(
    intent: &EmailIntent,
    public_url: &str,
    token: Option<&str>,
    valid_hours: u64,
) -> Result<RenderedEmail, minijinja::Error> {
    let env = ENVIRONMENT.as_ref().map_err(|e| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    })?;
    let base = public_url.trim_end_matches('/');
    let link = match (intent.kind.token_path(), token) {
        (Some(path), Some(token)) => format!("{base}{path}?token={token}"),
        _ => String::new(),
    };
    let ctx = context! {
        name => &intent.name,
        email => &intent.to,
        // Built here from the configured base URL and a base64url token: nothing to escape,
        // and escaping would turn every `/` of the link into an entity.
        link => minijinja::Value::from_safe_string(link),
        token => minijinja::Value::from_safe_string(token.unwrap_or_default().to_owned()),
        valid_hours => valid_hours,
        forgot_link => minijinja::Value::from_safe_string(format!("{base}/forgot-password")),
        ..template_values(&intent.kind)
    };
    let kind = intent.kind.name();
    let get = |part: &str| env.get_template(&format!("{kind}/{part}"));
    let subject = get("subject.txt")?
        .render(&ctx)?
        .trim()
        .replace(['\r', '\n'], " ");
    Ok(RenderedEmail {
        subject,
        text: get("body.txt")?.render(&ctx)?,
        html: get("body.html")?.render(&ctx)?,
    })
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::email::{
        AccountRestoreParams, EmailChangeNoticeParams, IdentityParams, NoParams, PasskeyParams,
        PasswordChangedParams, RecoveryCodeUsedParams, TwoFactorParams,
    };

    fn intent(kind: EmailKind, name: &str) -> EmailIntent {
        EmailIntent {
            id: Uuid::now_v7(),
            kind,
            user_id: Uuid::now_v7(),
            to: "ada@example.com".into(),
            name: name.into(),
            token_key: None,
        }
    }

    fn every_kind() -> [EmailKind; 14] {
        [
            EmailKind::Welcome(NoParams),
            EmailKind::VerifyEmail(NoParams),
            EmailKind::PasswordReset(NoParams),
            EmailKind::PasswordChanged(PasswordChangedParams {
                changed_at: "2026-11-26T13:10:37Z".into(),
            }),
            EmailKind::EmailChangeConfirm(NoParams),
            EmailKind::EmailChangeNotice(EmailChangeNoticeParams {
                new_email_masked: "n***@example.org".into(),
                requested_at: "2026-11-25T13:10:37Z".into(),
            }),
            EmailKind::AccountRestore(AccountRestoreParams {
                restore_until: "2026-12-26T13:10:37Z".into(),
            }),
            EmailKind::TwoFactorEnabled(TwoFactorParams {
                method: "totp".into(),
                at: "2026-11-26T13:10:37Z".into(),
            }),
            EmailKind::TwoFactorDisabled(TwoFactorParams {
                method: "totp".into(),
                at: "2026-11-27T13:10:37Z".into(),
            }),
            EmailKind::RecoveryCodeUsed(RecoveryCodeUsedParams {
                used_at: "2026-11-28T13:10:37Z".into(),
                codes_left: 7,
            }),
            EmailKind::PasskeyAdded(PasskeyParams {
                passkey_name: "Work laptop".into(),
                at: "2026-11-29T13:10:37Z".into(),
            }),
            EmailKind::PasskeyRemoved(PasskeyParams {
                passkey_name: "Old phone".into(),
                at: "2026-11-30T13:10:37Z".into(),
            }),
            EmailKind::IdentityLinked(IdentityParams {
                provider: "github".into(),
                at: "2026-12-01T13:10:37Z".into(),
            }),
            EmailKind::IdentityUnlinked(IdentityParams {
                provider: "corp-sso".into(),
                at: "2026-12-02T13:10:37Z".into(),
            }),
        ]
    }

    #[test]
    fn every_email_renders_both_parts() {
        for kind in every_kind() {
            let token = kind.token_path().map(|_| "TOKEN123");
            let email = render(
                &intent(kind.clone(), "Ada"),
                "https://devtalk.example/",
                token,
                24,
            )
            .unwrap();
            assert!(!email.subject.is_empty() && !email.subject.contains('\n'));
            assert!(email.text.contains("Hi Ada,"), "{kind:?}");
            assert!(email.html.contains("Hi Ada,"), "{kind:?}");
            if let Some(path) = kind.token_path() {
                let link = format!("https://devtalk.example{path}?token=TOKEN123");
                assert!(email.text.contains(&link), "{kind:?}: {}", email.text);
                assert!(email.html.contains(&link), "{kind:?}");
                assert!(
                    email.text.lines().any(|l| l.trim() == "TOKEN123"),
                    "{kind:?}"
                );
            }
        }
    }

    #[test]
    fn html_escapes_the_name_and_text_keeps_it() {
        let email = render(
            &intent(EmailKind::Welcome(NoParams), "<script>alert(1)</script>"),
            "http://x",
            Some("T"),
            24,
        )
        .unwrap();
        assert!(!email.html.contains("<script>"));
        assert!(email.html.contains("&lt;script&gt;"));
        assert!(email.text.contains("<script>alert(1)</script>"));
    }

    #[test]
    fn each_template_shows_its_values() {
        for kind in every_kind() {
            let values: Vec<String> = match &kind {
                EmailKind::PasswordChanged(p) => vec![p.changed_at.clone()],
                EmailKind::EmailChangeNotice(p) => {
                    vec![p.new_email_masked.clone(), p.requested_at.clone()]
                }
                EmailKind::AccountRestore(p) => vec![p.restore_until.clone()],
                EmailKind::TwoFactorEnabled(p) | EmailKind::TwoFactorDisabled(p) => {
                    vec!["an authenticator app (TOTP)".into(), p.at.clone()]
                }
                EmailKind::RecoveryCodeUsed(p) => {
                    vec![p.used_at.clone(), format!("{} unused", p.codes_left)]
                }
                EmailKind::PasskeyAdded(p) | EmailKind::PasskeyRemoved(p) => {
                    vec![format!("\"{}\"", p.passkey_name), p.at.clone()]
                }
                EmailKind::IdentityLinked(p) | EmailKind::IdentityUnlinked(p) => {
                    vec![format!("\"{}\"", p.provider), p.at.clone()]
                }
                _ => continue,
            };
            let email = render(&intent(kind.clone(), "Ada"), "https://x", Some("T"), 24).unwrap();
            for value in values {
                assert!(email.text.contains(&value), "{kind:?}: {}", email.text);
                assert!(email.html.contains(&value), "{kind:?}");
            }
        }
    }

    #[test]
    fn the_recovery_notice_counts_the_codes_left_and_escapes_the_name() {
        let notice = |codes_left| {
            let kind = EmailKind::RecoveryCodeUsed(RecoveryCodeUsedParams {
                used_at: "2026-11-28T13:10:37Z".into(),
                codes_left,
            });
            render(
                &intent(kind, "<script>alert(1)</script>"),
                "https://devtalk.example",
                None,
                24,
            )
            .unwrap()
        };
        let email = notice(7);
        assert!(
            email.text.contains("7 unused recovery codes are left."),
            "{}",
            email.text
        );
        assert!(
            email.html.contains("7 unused recovery codes are left."),
            "{}",
            email.html
        );
        assert!(!email.text.contains("generate new ones"));
        assert!(
            email
                .text
                .contains("https://devtalk.example/forgot-password")
        );
        assert!(
            email
                .html
                .contains("https://devtalk.example/forgot-password")
        );
        assert!(!email.html.contains("<script>"));
        assert!(email.html.contains("&lt;script&gt;"));
        assert!(email.text.contains("<script>alert(1)</script>"));

        let email = notice(1);
        for part in [&email.text, &email.html] {
            assert!(
                part.contains("Only 1 unused recovery code is left"),
                "{part}"
            );
            assert!(part.contains("generate new ones in your security settings"));
        }
        let email = notice(2);
        for part in [&email.text, &email.html] {
            assert!(
                part.contains("Only 2 unused recovery codes are left"),
                "{part}"
            );
        }
        let email = notice(0);
        for part in [&email.text, &email.html] {
            assert!(part.contains("no unused recovery codes left"), "{part}");
            assert!(part.contains("generate new ones in your security settings"));
        }
    }

    #[test]
    fn the_passkey_notices_escape_the_passkey_name_in_html_only() {
        let name = "<script>alert(1)</script>";
        let at = "2026-11-29T13:10:37Z";
        for kind in [
            EmailKind::PasskeyAdded(PasskeyParams {
                passkey_name: name.into(),
                at: at.into(),
            }),
            EmailKind::PasskeyRemoved(PasskeyParams {
                passkey_name: name.into(),
                at: at.into(),
            }),
        ] {
            let email = render(
                &intent(kind.clone(), "Ada"),
                "https://devtalk.example",
                None,
                24,
            )
            .unwrap();
            assert!(!email.html.contains("<script>"), "{kind:?}: {}", email.html);
            assert!(
                email
                    .html
                    .contains("\"&lt;script&gt;alert(1)&lt;&#x2f;script&gt;\""),
                "{kind:?}: {}",
                email.html
            );
            assert!(
                email.text.contains("\"<script>alert(1)</script>\""),
                "{kind:?}: {}",
                email.text
            );
            for part in [&email.text, &email.html] {
                assert!(part.contains(at), "{kind:?}: {part}");
                assert!(part.contains("https://devtalk.example/forgot-password"));
            }
            assert!(!email.subject.contains("<script>"), "{kind:?}");
        }
    }
}

use std::sync::LazyLock;

use minijinja::{Environment, context};

use super::EmailIntent;

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
        ..minijinja::Value::from(intent.params.clone())
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
    use std::collections::BTreeMap;

    use uuid::Uuid;

    use super::*;
    use crate::email::EmailKind;

    fn intent(kind: EmailKind, name: &str) -> EmailIntent {
        EmailIntent {
            id: Uuid::now_v7(),
            kind,
            user_id: Uuid::now_v7(),
            to: "ada@example.com".into(),
            name: name.into(),
            token_key: None,
            params: BTreeMap::from([
                ("old_email".into(), "old@example.com".into()),
                ("new_email".into(), "ada@example.com".into()),
                ("changed_at".into(), "2026-11-26T13:10:37Z".into()),
                ("restore_until".into(), "2026-12-26T13:10:37Z".into()),
            ]),
        }
    }

    #[test]
    fn every_email_renders_both_parts() {
        for kind in [
            EmailKind::Welcome,
            EmailKind::VerifyEmail,
            EmailKind::PasswordReset,
            EmailKind::PasswordChanged,
            EmailKind::EmailChangeConfirm,
            EmailKind::EmailChangeNotice,
            EmailKind::AccountRestore,
        ] {
            let token = kind.token_path().map(|_| "TOKEN123");
            let email =
                render(&intent(kind, "Ada"), "https://devtalk.example/", token, 24).unwrap();
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
            &intent(EmailKind::Welcome, "<script>alert(1)</script>"),
            "http://x",
            Some("T"),
            24,
        )
        .unwrap();
        assert!(!email.html.contains("<script>"));
        assert!(email.html.contains("&lt;script&gt;"));
        assert!(email.text.contains("<script>alert(1)</script>"));
    }
}

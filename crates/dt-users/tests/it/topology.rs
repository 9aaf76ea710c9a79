//! The production topology, end to end: every dt-users service of compose.yaml runs as a
//! process of its own — `kafka create-topics` and `migrate` once, two `serve` instances, a
//! `worker`, a `relay`, a `consume` and a `beat` — with the command line and the environment
//! compose.yaml gives it (read from the file itself, so the two cannot drift), and one user
//! lives a whole life through them: registration, the emailed verification, sign-in on one
//! instance and refresh on the other, a profile change and its event, a ban and an unban
//! commanded over Kafka, deletion, restoration, deletion again and erasure.
//!
//! compose.yaml's other services are stood in for by the test's own: MariaDB (a fresh
//! database), Redis (a key prefix of the test's), tansu for Kafka and the aiosmtpd sink for
//! Mailpit. Only the values listed in [`overrides`] differ from what compose.yaml says.

mod client;
mod compose;
mod processes;
mod start;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, Row};

use crate::events::assert_valid_event;
use crate::helpers::{MFA_KEY, PASSWORD, SIGNING_KEY, redis_url};
use crate::kafka::produce;
use crate::mail::token_in;
use client::{command, email, events_until, eventually, outcome, tokens, types};
use start::{Topology, start_services};

const EVENTS: &str = "devtalk.users.events";
const COMMANDS: &str = "devtalk.users.commands";
const EMAIL: &str = "ada@example.com";
const USERNAME: &str = "ada";

/// The deletion grace period of the test: short enough to wait for the erasure, long enough to
/// restore the account first (its email goes through the relay, the queue, the worker and SMTP).
const GRACE_SECS: u64 = 20;

/// Generous: the machine may be busy with other tests; every wait polls and ends early.
const WAIT: Duration = Duration::from_secs(90);

/// The dt-users services compose.yaml must have: each role of the README's command table.
const SERVICES: [&str; 7] = [
    "beat",
    "consume",
    "kafka-topics",
    "migrate",
    "relay",
    "serve",
    "worker",
];

/// compose.yaml's other services, each stood in for by a server of the test's own.
const STOOD_IN_FOR: [&str; 4] = ["kafka", "mailpit", "mysql", "redis"];

/// Processes of a service the test runs: two API instances, one of each other role.
fn instances(service: &str) -> usize {
    if service == "serve" { 2 } else { 1 }
}

/// How the test changes a variable of compose.yaml's environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// compose.yaml sets it (the test checks it does); the test gives it another value.
    Replace,
    /// compose.yaml leaves it at the service's default; the test sets it.
    Add,
}

/// The only values of compose.yaml's environment the test changes, for every process alike.
/// Besides these, each long-running process gets `--host 127.0.0.1` and a free `--port`
/// instead of compose.yaml's (all share one network namespace here).
fn overrides(
    database_url: &str,
    redis_prefix: &str,
    kafka_bootstrap: &str,
    smtp_url: &str,
) -> Vec<(&'static str, String, Change)> {
    use Change::{Add, Replace};
    vec![
        // Addresses of the services the test stands in for (compose.yaml names its containers).
        ("DT_USERS_DATABASE_URL", database_url.to_owned(), Replace),
        ("DT_USERS_REDIS_URL", redis_url(), Replace),
        ("DT_USERS_JOBS_URL", redis_url(), Replace),
        (
            "DT_USERS_KAFKA_BOOTSTRAP_SERVERS",
            kafka_bootstrap.to_owned(),
            Replace,
        ),
        ("DT_USERS_SMTP_URL", smtp_url.to_owned(), Replace),
        // tansu has no idempotent producer; compose.yaml's Apache Kafka has.
        ("DT_USERS_KAFKA_IDEMPOTENCE", "false".to_owned(), Replace),
        // Redis is shared with other tests: this one's keys and jobs under a prefix of its own.
        ("DT_USERS_REDIS_KEY_PREFIX", redis_prefix.to_owned(), Add),
        (
            "DT_USERS_JOBS_NAMESPACE",
            format!("{redis_prefix}:jobs"),
            Add,
        ),
        // .env.example holds placeholders of the secrets that the service refuses, on purpose.
        ("DT_USERS_SIGNING_KEYS", SIGNING_KEY.clone(), Replace),
        ("DT_USERS_MFA_ENCRYPTION_KEY", MFA_KEY.clone(), Replace),
        (
            "DT_USERS_EMAIL_TOKEN_SECRETS",
            uuid::Uuid::new_v4().simple().to_string().repeat(2),
            Replace,
        ),
        // Erasure within the test's time: a short grace period, a sweep every second.
        (
            "DT_USERS_DELETION_GRACE_PERIOD",
            GRACE_SECS.to_string(),
            Add,
        ),
        ("DT_USERS_PURGE_INTERVAL", "1".to_owned(), Add),
    ]
}

#[tokio::test]
async fn a_user_lives_a_whole_life_through_the_services_of_compose_yaml() {
    let mut t = Topology::new().await;
    let (apis, services) = start_services(&mut t).await;
    let [one, two] = &apis[..] else {
        panic!("two serve instances")
    };
    let bootstrap = t.broker.bootstrap();
    let public_url = &services["serve"].environment["DT_USERS_PUBLIC_URL"];

    t.step("register on instance 1");
    let response = one
        .post(
            "/api/v1/auth/register",
            &json!({"email": EMAIL, "username": USERNAME, "password": PASSWORD}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let user_id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    t.step("the welcome email arrives over SMTP (relay → job queue → worker)");
    let welcome = email(&t.sink, "Welcome to Dev Talk", 1).await;
    let text = welcome["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("{public_url}/verify-email?token=")),
        "the link is made from compose.yaml's DT_USERS_PUBLIC_URL: {text}"
    );
    let token = token_in(&welcome);

    t.step("verify the address with the emailed token on instance 2");
    let response = two
        .post("/api/v1/auth/email/verify", &json!({"token": token}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    t.step("sign in on instance 1");
    let (access, refresh) = one.sign_in().await;

    t.step("refresh on instance 2; the new token works on instance 1");
    let response = two.refresh(&refresh).await;
    assert_eq!(response.status(), StatusCode::OK, "refresh on instance 2");
    let (access_2, refresh_2) = tokens(response).await;
    let me: Value = one.current(&access_2).await.json().await.unwrap();
    assert_eq!(me["id"], user_id.as_str());
    assert_eq!(me["email_verified"], true, "{me}");

    t.step("change the profile on instance 1; instance 2 sees it");
    let response = one
        .patch_current(
            &access_2,
            &json!({"display_name": "Ada Lovelace", "bio": "Analyst"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let me: Value = two.current(&access_2).await.json().await.unwrap();
    assert_eq!(me["display_name"], "Ada Lovelace", "{me}");

    t.step("the updated event reaches Kafka");
    let events = events_until(&bootstrap, &user_id, "devtalk.user.updated").await;
    let updated = events
        .iter()
        .find(|e| e["type"] == "devtalk.user.updated")
        .unwrap();
    assert_eq!(
        updated["data"]["changed"],
        json!(["display_name", "bio"]),
        "{updated}"
    );
    assert_eq!(updated["data"]["user"]["display_name"], "Ada Lovelace");
    assert_valid_event(updated);

    t.step("a ban command on the commands topic");
    for api in [one, two] {
        assert_eq!(api.current(&access).await.status(), StatusCode::OK);
    }
    produce(
        &bootstrap,
        COMMANDS,
        &user_id,
        &command("devtalk.user.ban", &user_id),
    )
    .await;

    t.step("banned: tokens and sign-in refused on both instances");
    // Polled with a token, not with sign-ins: production's limits allow one client only 5
    // sign-ins to one account at once, then one every 10 s, and the test signs in 6 times.
    eventually("the ban applied by consume", WAIT, async || {
        (one.current(&access_2).await.status() == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    for (n, api) in [(1, one), (2, two)] {
        assert_eq!(
            outcome(api.login().await).await,
            (StatusCode::FORBIDDEN, "account_banned".into()),
            "sign-in on instance {n}"
        );
        for token in [&access, &access_2] {
            assert_eq!(
                outcome(api.current(token).await).await,
                (StatusCode::UNAUTHORIZED, "session_revoked".into()),
                "an access token on instance {n}"
            );
        }
        assert_eq!(
            api.refresh(&refresh_2).await.status(),
            StatusCode::UNAUTHORIZED,
            "the refresh token on instance {n}"
        );
    }

    t.step("an unban command; sign-in works again");
    produce(
        &bootstrap,
        COMMANDS,
        &user_id,
        &command("devtalk.user.unban", &user_id),
    )
    .await;
    // A banned account's public profile is hidden; it shows again once the unban applies.
    eventually("the unban applied by consume", WAIT, async || {
        let response = one
            .client
            .get(format!("{}/api/v1/users/{USERNAME}", one.base))
            .send()
            .await
            .unwrap();
        (response.status() == StatusCode::OK).then_some(())
    })
    .await;
    let (access, _) = two.sign_in().await;

    t.step("delete the account on instance 1; its session ends on instance 2 too");
    let response = one.delete_account(&access).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "deleted");
    assert_eq!(
        outcome(two.current(&access).await).await,
        (StatusCode::UNAUTHORIZED, "session_revoked".into())
    );

    t.step("the restoration email arrives");
    let restoration = email(&t.sink, "you can restore it", 1).await;
    let text = restoration["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("{public_url}/restore-account?token=")),
        "{text}"
    );
    let token = token_in(&restoration);

    t.step("restore the account on instance 2 with the emailed token");
    let response = two
        .post("/api/v1/users/restore", &json!({"token": token}))
        .await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "restoration within the {GRACE_SECS} s grace period"
    );
    let (access, _) = one.sign_in().await;

    t.step("delete the account again, on instance 2");
    let response = two.delete_account(&access).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    t.step("after the grace period, beat erases the account");
    let mut db = sqlx::AnyConnection::connect(&t.database_url).await.unwrap();
    eventually(
        "the erasure",
        WAIT + Duration::from_secs(GRACE_SECS),
        async || {
            let rows: i64 = sqlx::query("SELECT COUNT(*) FROM users WHERE id = ?")
                .bind(user_id.clone())
                .fetch_one(&mut db)
                .await
                .unwrap()
                .get(0);
            (rows == 0).then_some(())
        },
    )
    .await;
    assert_eq!(
        outcome(one.login().await).await,
        (StatusCode::UNAUTHORIZED, "invalid_credentials".into()),
        "sign-in of an erased account"
    );
    let response = two
        .client
        .get(format!("{}/api/v1/users/{USERNAME}", two.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    t.step("the purged event reaches Kafka, after the user's whole life in order");
    let events = events_until(&bootstrap, &user_id, "devtalk.user.purged").await;
    assert_eq!(
        types(&events),
        [
            "devtalk.user.registered",
            "devtalk.user.email_verified",
            "devtalk.user.updated",
            "devtalk.user.banned",
            "devtalk.user.unbanned",
            "devtalk.user.deleted",
            "devtalk.user.restored",
            "devtalk.user.deleted",
            "devtalk.user.purged",
        ]
    );
    events.iter().for_each(assert_valid_event);
    t.step("done");
}

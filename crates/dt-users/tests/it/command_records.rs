//! The records of handled commands: ids compared exactly as sent, swept once older than the
//! retention, and one effect however many deliveries race.

use std::sync::Arc;
use std::time::Duration;

use dt_users::service::{Command, CommandOutcome};
use reqwest::StatusCode;
use sqlx::Row;
use uuid::Uuid;

use crate::helpers::{PASSWORD, SqliteFile, TestApp, assert_problem};

async fn register(app: &TestApp, name: &str) -> Uuid {
    let user = app.register(&format!("{name}@example.com"), name).await;
    Uuid::parse_str(user["id"].as_str().unwrap()).unwrap()
}

/// The recorded command ids, sorted.
async fn recorded_ids(db: &mut sqlx::AnyConnection) -> Vec<String> {
    sqlx::query("SELECT CAST(id AS CHAR) FROM processed_commands ORDER BY id")
        .fetch_all(db)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

async fn command_ids_are_compared_byte_for_byte(app: &TestApp, mut db: sqlx::AnyConnection) {
    let user_id = register(app, "ada").await;
    let ban = Command::Ban {
        user_id,
        reason: Some("spam".into()),
    };
    let unban = Command::Unban { user_id };
    let revoke = Command::RevokeSessions { user_id };

    assert_eq!(
        app.app.apply_command("Cmd-1", &ban).await.unwrap(),
        CommandOutcome::Applied
    );
    assert_problem(
        app.login("ada@example.com", PASSWORD).await,
        StatusCode::FORBIDDEN,
        "account_banned",
    )
    .await;
    // Another case is another command.
    assert_eq!(
        app.app.apply_command("cmd-1", &unban).await.unwrap(),
        CommandOutcome::Applied
    );
    let tokens = app.sign_in("ada@example.com").await;
    // A trailing space too.
    assert_eq!(
        app.app.apply_command("cmd-1 ", &revoke).await.unwrap(),
        CommandOutcome::Applied
    );
    assert_problem(
        app.get_auth("/api/v1/users/current", &tokens.access).await,
        StatusCode::UNAUTHORIZED,
        "session_revoked",
    )
    .await;
    // Each id, redelivered, is recognised.
    for (id, command) in [("Cmd-1", &ban), ("cmd-1", &unban), ("cmd-1 ", &revoke)] {
        assert_eq!(
            app.app.apply_command(id, command).await.unwrap(),
            CommandOutcome::AlreadyHandled,
            "{id:?}"
        );
    }
    // The redelivered ban changed nothing: the account is not banned.
    app.sign_in("ada@example.com").await;
    assert_eq!(recorded_ids(&mut db).await, ["Cmd-1", "cmd-1", "cmd-1 "]);
}

#[tokio::test]
async fn command_ids_differing_in_case_or_trailing_space_are_different_commands_on_mariadb() {
    let app = TestApp::spawn().await;
    let db = app.db().await;
    command_ids_are_compared_byte_for_byte(&app, db).await;
}

#[tokio::test]
async fn command_ids_differing_in_case_or_trailing_space_are_different_commands_on_sqlite() {
    let file = SqliteFile::fresh();
    let url = file.url();
    let app = TestApp::spawn_with(|s| s.database_url = Some(url)).await;
    let db = file.connect().await;
    command_ids_are_compared_byte_for_byte(&app, db).await;
}

#[tokio::test]
async fn handled_command_ids_are_swept_once_older_than_the_retention() {
    const RETENTION: u64 = 3600;
    let app = TestApp::spawn_with(|s| s.command_retention = RETENTION).await;
    let mut db = app.db().await;
    let user_id = register(&app, "ada").await;
    let beat = app.beat(Duration::from_secs(60));

    let ban = Command::Ban {
        user_id,
        reason: None,
    };
    assert_eq!(
        app.app.apply_command("ban-old", &ban).await.unwrap(),
        CommandOutcome::Applied
    );
    app.clock.advance_secs(1800);
    assert_eq!(
        app.app
            .apply_command("unban-new", &Command::Unban { user_id })
            .await
            .unwrap(),
        CommandOutcome::Applied
    );
    assert!(beat.tick().await.unwrap());
    assert_eq!(recorded_ids(&mut db).await, ["ban-old", "unban-new"]);

    // Just short of the retention for the older one: both stay.
    app.clock.advance_secs(1799);
    assert!(beat.tick().await.unwrap());
    assert_eq!(recorded_ids(&mut db).await, ["ban-old", "unban-new"]);

    // Past it for the older one only.
    app.clock.advance_secs(2);
    assert!(beat.tick().await.unwrap());
    assert_eq!(recorded_ids(&mut db).await, ["unban-new"]);

    app.clock.advance_secs(1800);
    assert!(beat.tick().await.unwrap());
    assert!(recorded_ids(&mut db).await.is_empty());
}

async fn racing_deliveries_take_effect_once(app: &TestApp, mut db: sqlx::AnyConnection) {
    const ROUNDS: usize = 10;
    const TASKS: usize = 10;
    for round in 0..ROUNDS {
        let user_id = register(app, &format!("user{round}")).await;
        let ban = Command::Ban {
            user_id,
            reason: Some("spam".into()),
        };
        let id = format!("ban-{round}");
        let start = Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..TASKS {
            let (app, ban, id, start) = (app.app.clone(), ban.clone(), id.clone(), start.clone());
            tasks.spawn(async move {
                start.wait().await;
                app.apply_command(&id, &ban).await
            });
        }
        let outcomes: Vec<CommandOutcome> = tasks
            .join_all()
            .await
            .into_iter()
            .map(|outcome| outcome.unwrap())
            .collect();
        let applied = outcomes
            .iter()
            .filter(|o| **o == CommandOutcome::Applied)
            .count();
        let duplicates = outcomes
            .iter()
            .filter(|o| **o == CommandOutcome::AlreadyHandled)
            .count();
        assert_eq!((applied, duplicates), (1, TASKS - 1), "round {round}");
        let events: i64 = sqlx::query("SELECT COUNT(*) FROM outbox WHERE user_id = ? AND name = ?")
            .bind(user_id.to_string())
            .bind("devtalk.user.banned")
            .fetch_one(&mut db)
            .await
            .unwrap()
            .get(0);
        assert_eq!(events, 1, "round {round}");
        assert_problem(
            app.login(&format!("user{round}@example.com"), PASSWORD)
                .await,
            StatusCode::FORBIDDEN,
            "account_banned",
        )
        .await;
    }
}

#[tokio::test]
async fn one_command_applied_from_ten_tasks_at_once_takes_effect_once_on_mariadb() {
    let app = TestApp::spawn().await;
    let db = app.db().await;
    racing_deliveries_take_effect_once(&app, db).await;
}

#[tokio::test]
async fn one_command_applied_from_ten_tasks_at_once_takes_effect_once_on_sqlite() {
    let file = SqliteFile::fresh();
    let url = file.url();
    let app = TestApp::spawn_with(|s| s.database_url = Some(url)).await;
    let db = file.connect().await;
    racing_deliveries_take_effect_once(&app, db).await;
}

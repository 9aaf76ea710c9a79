//! Addresses are one account however their letters are encoded or cased, lower-casing never
//! makes a stored key too long, keys stored by an older release are brought over, and names
//! cannot hide or reorder text.

use dt_users::domain::Email;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Row;

use crate::helpers::{PASSWORD, SqliteFile, TestApp, assert_problem, send_together};

const COMPOSED: &str = "jos\u{e9}@example.com";
const DECOMPOSED: &str = "jose\u{301}@example.com";

async fn register_raw(app: &TestApp, email: &str, username: &str) -> reqwest::Response {
    app.post_json(
        "/api/v1/auth/register",
        &json!({"email": email, "username": username, "password": PASSWORD}),
    )
    .await
}

/// Asserts a 422 `validation_error` that names `field`.
async fn assert_invalid_field(response: reqwest::Response, field: &str) {
    assert_eq!(crate::helpers::invalid_fields(response).await, [field]);
}

async fn spawn_on_sqlite(file: &SqliteFile) -> TestApp {
    let url = file.url();
    TestApp::spawn_with(|s| s.database_url = Some(url)).await
}

#[tokio::test]
async fn an_address_typed_composed_or_decomposed_is_one_account() {
    let app = TestApp::spawn().await;
    app.register(COMPOSED, "jose").await;
    assert_problem(
        register_raw(&app, DECOMPOSED, "jose2").await,
        StatusCode::CONFLICT,
        "email_taken",
    )
    .await;
    for spelling in [
        COMPOSED,
        DECOMPOSED,
        "JOS\u{c9}@EXAMPLE.COM",
        "JOSE\u{301}@Example.Com",
    ] {
        let response = app.login(spelling, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK, "{spelling:?}");
    }

    // The other way round: decomposed first, composed second.
    app.register("Ren\u{65}\u{301}e@example.com", "renee").await;
    assert_problem(
        register_raw(&app, "ren\u{e9}e@EXAMPLE.com", "renee2").await,
        StatusCode::CONFLICT,
        "email_taken",
    )
    .await;
    app.sign_in("REN\u{c9}E@example.com").await;
}

/// Addresses of `İ` (which lower-cases to two code points) and of ASCII with a few `İ`, near
/// each limit: the address's 254 characters, its key's 254 characters, the local part's 64
/// bytes, a label's 63 bytes.
fn dotted_capital_i_addresses() -> Vec<String> {
    let i = |n: usize| "\u{130}".repeat(n);
    let mut addresses = Vec::new();
    for local in 30..=34 {
        for labels in 1..=4 {
            let domain = vec![i(31); labels].join(".");
            addresses.push(format!("{}@{domain}.com", i(local)));
        }
    }
    // 64-byte local parts with `n` İ, three labels filled to `total` characters: the key is
    // `total + n` characters long.
    for n in 0..=5 {
        for total in 248..=256 {
            let local = format!("{}{}", i(n), "a".repeat(64 - 2 * n));
            let last = total + n - 197;
            let domain = format!(
                "{}.{}.{}.com",
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(last)
            );
            let address = format!("{local}@{domain}");
            assert_eq!(address.chars().count(), total);
            addresses.push(address);
        }
    }
    addresses
}

async fn lower_casing_never_overflows_a_stored_key(app: &TestApp) {
    let longest = format!(
        "{}@{}.{}.{}.com",
        "\u{130}".repeat(32),
        "\u{130}".repeat(31),
        "\u{130}".repeat(31),
        "\u{130}".repeat(31)
    );
    assert_eq!(longest.chars().count(), 132);
    let addresses = dotted_capital_i_addresses();
    assert!(addresses.contains(&longest));
    let (mut created, mut refused) = (0, 0);
    for (n, address) in addresses.iter().enumerate() {
        let response = register_raw(app, address, &format!("user{n}")).await;
        let accepted = Email::parse(address).is_ok();
        match response.status() {
            StatusCode::CREATED => {
                assert!(
                    accepted,
                    "{address:?} was stored though the parser refuses it"
                );
                assert!(Email::lookup_key_of(address).chars().count() <= Email::MAX_LEN);
                created += 1;
                let login = app.login(address, PASSWORD).await;
                assert_eq!(login.status(), StatusCode::OK, "{address:?}");
            }
            StatusCode::UNPROCESSABLE_ENTITY => {
                assert!(!accepted, "{address:?} was refused though it is valid");
                assert_invalid_field(response, "email").await;
                refused += 1;
            }
            other => panic!("{address:?}: {other} {}", response.text().await.unwrap()),
        }
        if *address == longest {
            assert!(!accepted, "the 257-character key must be refused");
        }
    }
    println!("{created} addresses created, {refused} refused");
    // Both sides of the limits were exercised.
    assert!(
        created >= 10 && refused >= 10,
        "{created} created, {refused} refused"
    );
}

#[tokio::test]
async fn dotted_capital_i_addresses_near_every_limit_are_201_or_422_never_500_on_mariadb() {
    let app = TestApp::spawn().await;
    lower_casing_never_overflows_a_stored_key(&app).await;
}

#[tokio::test]
async fn dotted_capital_i_addresses_near_every_limit_are_201_or_422_never_500_on_sqlite() {
    let file = SqliteFile::fresh();
    let app = spawn_on_sqlite(&file).await;
    lower_casing_never_overflows_a_stored_key(&app).await;
}

/// Registers two accounts, rewrites them as a release that stored the address as typed
/// (decomposed) and lower-cased it without normalizing would have, and migrates.
async fn keys_of_an_older_release_are_normalized(app: &TestApp, mut db: sqlx::AnyConnection) {
    let jose = app.register(COMPOSED, "jose").await;
    let renee = app.register("Ren\u{e9}e@Example.com", "renee").await;
    let old_rows = [
        (&jose, DECOMPOSED, DECOMPOSED),
        (
            &renee,
            "Rene\u{301}e@Example.com",
            "rene\u{301}e@example.com",
        ),
    ];
    for (user, email, email_lower) in old_rows {
        sqlx::query("UPDATE users SET email = ?, email_lower = ? WHERE id = ?")
            .bind(email)
            .bind(email_lower)
            .bind(user["id"].as_str().unwrap().to_owned())
            .execute(&mut db)
            .await
            .unwrap();
    }
    // As the older release left them, the composed spelling finds neither.
    for address in [COMPOSED, "ren\u{e9}e@example.com"] {
        assert_problem(
            app.login(address, PASSWORD).await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        )
        .await;
    }

    app.app.db.migrate().await.unwrap();

    for (user, key) in [(&jose, COMPOSED), (&renee, "ren\u{e9}e@example.com")] {
        let stored: String = sqlx::query("SELECT email_lower FROM users WHERE id = ?")
            .bind(user["id"].as_str().unwrap().to_owned())
            .fetch_one(&mut db)
            .await
            .unwrap()
            .get(0);
        assert_eq!(stored, key);
    }
    for spelling in [
        COMPOSED,
        DECOMPOSED,
        "JOS\u{c9}@example.com",
        "Ren\u{e9}e@Example.com",
        "RENE\u{301}E@EXAMPLE.COM",
    ] {
        let response = app.login(spelling, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK, "{spelling:?}");
    }
    // And the keys are unique again under the current rule.
    assert_problem(
        register_raw(app, COMPOSED, "jose2").await,
        StatusCode::CONFLICT,
        "email_taken",
    )
    .await;
}

#[tokio::test]
async fn migrate_normalizes_email_keys_stored_by_an_older_release_on_mariadb() {
    let app = TestApp::spawn().await;
    let db = app.db().await;
    keys_of_an_older_release_are_normalized(&app, db).await;
}

#[tokio::test]
async fn migrate_normalizes_email_keys_stored_by_an_older_release_on_sqlite() {
    let file = SqliteFile::fresh();
    let app = spawn_on_sqlite(&file).await;
    let db = file.connect().await;
    keys_of_an_older_release_are_normalized(&app, db).await;
}

/// Text that would show as something else: a bidi override, isolates, a zero-width space, a
/// byte-order mark, joiners with nothing to join.
const HIDING: &[&str] = &[
    "\u{202E}gnp.exe",
    "ada\u{2066}x\u{2069}",
    "ada\u{2067}x\u{2069}",
    "ada\u{2068}x\u{2069}",
    "ad\u{200B}min",
    "\u{FEFF}ada",
    "\u{200D}ada",
    "ada\u{200D}",
    "ada \u{200C} lovelace",
];

/// Joiners between visible characters: an emoji sequence, and a Persian word.
const FAMILY: &str = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}";
const PERSIAN: &str = "\u{645}\u{6CC}\u{200C}\u{62E}\u{648}\u{627}\u{647}\u{645}";

#[tokio::test]
async fn names_and_bios_that_hide_or_reorder_text_are_422_naming_the_field() {
    let app = TestApp::spawn().await;
    for (n, bad) in HIDING.iter().enumerate() {
        let response = app
            .post_json(
                "/api/v1/auth/register",
                &json!({"email": format!("u{n}@example.com"), "username": format!("user{n}"), "password": PASSWORD, "display_name": bad}),
            )
            .await;
        assert_invalid_field(response, "display_name").await;
    }
    let tokens = app.signed_in().await;
    for bad in HIDING {
        for field in ["display_name", "bio"] {
            let response = app
                .patch_current(&tokens.access, &json!({field: bad}))
                .await;
            assert_invalid_field(response, field).await;
        }
    }
    let me: Value = app
        .get_auth("/api/v1/users/current", &tokens.access)
        .await
        .json()
        .await
        .unwrap();
    assert!(me["display_name"].is_null() && me["bio"].is_null(), "{me}");
}

#[tokio::test]
async fn joiners_inside_an_emoji_or_a_word_are_kept_as_sent() {
    let app = TestApp::spawn().await;
    let response = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"email": "ada@example.com", "username": "ada", "password": PASSWORD, "display_name": FAMILY}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["display_name"], FAMILY);

    let tokens = app.sign_in("ada@example.com").await;
    for (display_name, bio) in [(PERSIAN, FAMILY), (FAMILY, PERSIAN)] {
        let response = app
            .patch_current(
                &tokens.access,
                &json!({"display_name": display_name, "bio": bio}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let me: Value = app
            .get_auth("/api/v1/users/current", &tokens.access)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(me["display_name"], display_name);
        assert_eq!(me["bio"], bio);
    }
}

#[tokio::test]
async fn spellings_of_one_address_registered_at_once_make_one_account() {
    let app = TestApp::spawn().await;
    for round in 0..10 {
        let spellings = [
            format!("ren{round}\u{e9}e@example.com"),
            format!("ren{round}e\u{301}e@example.com"),
            format!("REN{round}\u{c9}E@example.com"),
            format!("REN{round}E\u{301}E@EXAMPLE.COM"),
        ];
        let requests = spellings.iter().enumerate().map(|(i, email)| {
            app.client.post(app.url("/api/v1/auth/register")).json(
                &json!({"email": email, "username": format!("renee{round}x{i}"), "password": PASSWORD}),
            )
        });
        let statuses = send_together(requests).await;
        let created = statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count();
        let taken = statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count();
        assert_eq!((created, taken), (1, 3), "round {round}: {statuses:?}");
    }
}
